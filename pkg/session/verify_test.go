package session

import (
	"context"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestVerifyRealPrograms: udstrace's counts against its own LD_PRELOAD counter on real programs;
// a difference is allowed only when it is explained per call site.
func TestVerifyRealPrograms(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	for _, argv := range [][]string{
		{bins.AllocPattern, "2"},
		{"/bin/ls", "-l", "/"},
		{"/usr/bin/sort", "/etc/passwd"},
		{"/bin/sh", "-c", "ls -l / | sort | head -3"}, // forked children allocate in the shell's image before their exec
	} {
		t.Run(strings.Join(argv, " "), func(t *testing.T) {
			o := testOptions(t)
			o.Command, o.Env = argv, VerifyEnv()
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := Verify(context.Background(), argv, rep)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) == 0 {
				t.Fatal("nothing compared")
			}
			for _, r := range rows {
				if !r.Match && len(r.Explanation) == 0 {
					t.Errorf("%s (pid %d): counts differ without an explanation: %+v", r.Comm, r.TracedPID, r.Kinds)
				}
				for _, e := range r.Explanation {
					if strings.Contains(e, "not explained") || strings.Contains(e, "more calls than the uprobes") || strings.Contains(e, "exceed") {
						t.Errorf("%s: %s", r.Comm, e)
					}
				}
				if argv[0] == bins.AllocPattern && !r.Match {
					t.Errorf("allocpattern must match exactly: %+v %v", r.Kinds, r.Explanation)
				}
			}
		})
	}
}

// threadsSrc: two threads allocate and exit; glibc then frees each thread's cache by calling its
// own free directly, which the uprobes see and no interposer can.
const threadsSrc = `#include <pthread.h>
#include <stdlib.h>
static void *volatile sink;
static void *work(void *arg) {
	for (int i = 0; i < 100; i++) { void *p = malloc(32 + i); sink = p; free(p); }
	return arg;
}
int main(void) {
	pthread_t a, b;
	pthread_create(&a, NULL, work, NULL);
	pthread_join(a, NULL);
	pthread_create(&b, NULL, work, NULL);
	pthread_join(b, NULL);
	return 0;
}
`

// TestVerifyExplainsLibcOwnFrees: the extra frees of exiting threads are named, by caller, as libc's own.
func TestVerifyExplainsLibcOwnFrees(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "threads", threadsSrc, "-pthread")
	o := testOptions(t)
	o.Command, o.Env = []string{bin}, VerifyEnv()
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Verify(context.Background(), o.Command, rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1: %+v", len(rows), rows)
	}
	r := rows[0]
	var traced, preload uint64
	for _, k := range r.Kinds {
		if k.Kind == "free" {
			traced, preload = k.Traced, k.Preload
		} else if k.Traced != k.Preload {
			t.Errorf("%s: udstrace %d, interposer %d: only frees may differ", k.Kind, k.Traced, k.Preload)
		}
	}
	if traced <= preload || r.Match {
		t.Fatalf("free: udstrace %d, interposer %d: want more frees seen by the uprobes (thread caches)", traced, preload)
	}
	joined := strings.Join(r.Explanation, "\n")
	if !strings.Contains(joined, "tcache_thread_shutdown") || strings.Contains(joined, "not explained") {
		t.Errorf("explanation does not name every extra free as libc's own:\n%s", joined)
	}
	if got := rep.Processes[0].UnmatchedFrees; got != traced-preload {
		t.Errorf("unmatched frees %d, want the %d extra ones", got, traced-preload)
	}
}
