// Package testenv holds what udstrace's kernel tests share: the root check and the LD_PRELOAD ground truth.
package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/pkg/launch"
	"github.com/udstrace/udstrace/workload"
)

// NeedRoot skips a kernel test for a developer without root, but fails it under CI=true: CI must run it.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root and CI=true: run the suite as root (make test)")
	}
	t.Skip("needs root: run make test (it uses sudo)")
}

// Binaries extracts the workload programs into a fresh directory.
func Binaries(t testing.TB) workload.Paths {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := workload.Extract(dir)
	if err != nil {
		t.Fatalf("%v (run make first)", err)
	}
	return p
}

// Counts is one process's calls per allocator function, as the interposer saw them.
type Counts = map[string]workload.Count

// Interpose runs argv under the LD_PRELOAD counting interposer and returns the counts per PID, in start order.
func Interpose(t testing.TB, so string, argv []string, extraEnv ...string) ([]int, map[int]Counts) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), append([]string{"LD_PRELOAD=" + so, "ALLOCOUNT_DIR=" + dir}, extraEnv...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("running %v under the interposer: %v\n%s", argv, err, out)
	}
	return ReadCounts(t, dir)
}

// ReadCounts parses the interposer's files in dir.
func ReadCounts(t testing.TB, dir string) ([]int, map[int]Counts) {
	t.Helper()
	all, err := workload.ReadCounts(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]Counts{}
	var pids []int
	for _, c := range all {
		out[c.PID] = c.Funcs
		pids = append(pids, c.PID)
	}
	return pids, out
}

// RunMain runs a test binary's tests, or, when udstrace's launcher re-executed the binary as
// its hold-then-exec helper, plays that helper instead.
func RunMain(m *testing.M) int {
	if launch.IsHelper() {
		err := launch.RunHelper()
		fmt.Fprintf(os.Stderr, "starting command: %v\n", err)
		return 127
	}
	return m.Run()
}

// udstracePrograms are the names of udstrace's BPF programs, as bpftool lists them.
var udstracePrograms = []string{"alloc_enter", "alloc_return", "free_enter", "alloc_count", "sys_enter", "sys_exit", "on_exec"}

// LeftPrograms lists udstrace's BPF programs that no process holds any more (through a
// program or link fd) and that still exist seconds later: programs that outlived their
// tracer. A raw tracepoint's program is freed a grace period after its link is closed, so one
// seen unheld is asked about again until a deadline. Programs of tracers still running
// (another test, another user) are theirs, not leftovers.
func LeftPrograms() []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := unheldPrograms()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unheldPrograms lists udstrace's programs that exist now with no process holding them.
func unheldPrograms() []string {
	out, err := exec.Command("bpftool", "-j", "prog", "show").Output()
	if err != nil {
		return nil
	}
	var progs []struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	_ = json.Unmarshal(out, &progs)
	held := map[int]bool{}
	infos, _ := filepath.Glob("/proc/[0-9]*/fdinfo/*")
	for _, f := range infos {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					held[id] = true
				}
			}
		}
	}
	var left []string
	for _, p := range progs {
		for _, name := range udstracePrograms {
			if p.Name == name && !held[p.ID] {
				left = append(left, fmt.Sprintf("%s (id %d)", name, p.ID))
			}
		}
	}
	return left
}

// CompileC builds a C program from source with cc -O1 -g and the given flags into a temp directory.
func CompileC(t testing.TB, name, src string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	args := append([]string{"-O1", "-g", "-o", bin, c}, flags...)
	if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	return bin
}
