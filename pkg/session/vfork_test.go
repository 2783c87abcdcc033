package session

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// vforkSrc: three children run in the parent's address space and each allocates one block there:
// a vfork child that then execs, one that _exits, and a clone(CLONE_VM) child (not a thread);
// the parent frees the three blocks once they are gone. It prints its pid and the children's.
const vforkSrc = `#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile made[3];
static char stack[1 << 16];

__attribute__((noinline)) static void child_alloc(int i) { made[i] = malloc(1000 + i); }

static int cloned(void *a) {
	(void)a;
	child_alloc(2);
	return 0;
}

int main(void) {
	pid_t c[3];
	for (int i = 0; i < 2; i++) {
		c[i] = vfork();
		if (c[i] == 0) {
			child_alloc(i);
			if (i == 0) {
				char *av[] = {"true", 0};
				execv("/bin/true", av);
			}
			_exit(0);
		}
		waitpid(c[i], 0, 0);
	}
	c[2] = clone(cloned, stack + sizeof stack, CLONE_VM | SIGCHLD, 0);
	waitpid(c[2], 0, 0);
	for (int i = 0; i < 3; i++)
		free(made[i]);
	printf("%d %d %d %d\n", getpid(), c[0], c[1], c[2]);
	fflush(stdout);
	return 0;
}
`

// TestVforkBlocksBelongToTheAddressSpace: a block a vfork or CLONE_VM child allocates in its
// parent's address space is the child's call (its site, under its pid) and the parent's to free:
// the parent's frees of them match (unmatched_frees 0) and leave nothing outstanding, with every
// call traced and with sampling (the kernel's table of picked blocks). The oracle is the program.
func TestVforkBlocksBelongToTheAddressSpace(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "vforker", vforkSrc)
	for _, sample := range []uint64{0, 1} {
		t.Run(fmt.Sprintf("sample-bytes=%d", sample), func(t *testing.T) {
			var out bytes.Buffer
			o := testOptions(t)
			o.Command, o.Stdout, o.SampleBytes = []string{bin}, &out, sample
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			var pid uint32
			var child [3]uint32
			if _, err := fmt.Sscan(out.String(), &pid, &child[0], &child[1], &child[2]); err != nil {
				t.Fatalf("the program printed %q: %v", out.String(), err)
			}
			v, _ := decodeView(t, rep)
			if sample == 0 {
				for _, p := range rep.Processes {
					if p.PID == pid && p.UnmatchedFrees != 0 {
						t.Errorf("parent: %d unmatched frees, want 0 (it freed its children's blocks)", p.UnmatchedFrees)
					}
					if p.PID == child[1] && p.OutstandingCount != 0 {
						t.Errorf("vfork child that _exits: %d blocks outstanding, want 0", p.OutstandingCount)
					}
				}
			}
			for i, c := range child {
				var calls, out uint64
				for _, s := range v.Sites {
					if s.PID == c && s.Kind == "malloc" && siteHasFunction(s.Stack, "child_alloc") {
						calls += s.Count
						out += s.OutstandingCount
					}
				}
				if calls != 1 || out != 0 {
					t.Errorf("child %d (pid %d): %d mallocs under child_alloc, %d outstanding; want 1, 0", i, c, calls, out)
				}
			}
		})
	}
}

// TestVforkShell: dash runs a command through vfork; what its child allocates before the exec,
// dash frees afterwards. None of dash's frees is unmatched (every block it frees was allocated in
// the trace, by dash or by the child in dash's address space).
func TestVforkShell(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"dash", "sqlite3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s runs this test: install it (apt-get install dash sqlite3)", tool)
		}
	}
	sql := filepath.Join(t.TempDir(), "t.sql")
	if err := os.WriteFile(sql, []byte("create table t(a); insert into t values(1); select * from t;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := testOptions(t)
	o.Command, o.Stdout = []string{"dash", "-c", "sqlite3 :memory: < " + sql}, io.Discard
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range rep.Processes {
		seen[p.Comm] = true
		if p.Comm == "dash" && (p.UnmatchedFrees != 0 || p.Frees == 0) {
			t.Errorf("dash (pid %d): %d frees, %d unmatched; want some, none unmatched", p.PID, p.Frees, p.UnmatchedFrees)
		}
	}
	if !seen["dash"] || !seen["sqlite3"] {
		t.Errorf("processes %v, want dash and sqlite3", seen)
	}
}
