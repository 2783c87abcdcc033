package session

import (
	"bufio"
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// Another tracer's return probe on malloc or realloc puts the [uprobes] trampoline where the
// return address was: count mode, which tells glibc's realloc(NULL, n) -> malloc tail call apart
// by return address, must still count each call once, and full mode too. The other tracers are
// a second udstrace tracing nothing system-wide (return probes on the whole malloc family) and
// bpftrace with uretprobes on malloc and realloc; allocpattern makes realloc(NULL, n) and
// reallocarray(NULL, ...) calls, and the interposer is the oracle.
func TestCountsUnderOtherReturnProbes(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	bpftrace, err := exec.LookPath("bpftrace")
	if err != nil {
		t.Fatal("bpftrace is one of the other tracers of this test: install it (apt-get install bpftrace)")
	}
	want := truthOf(t, bins.Allocount, bins.AllocPattern, "3")
	libc := libcPath(t)
	others := []struct {
		name     string
		argv     []string
		attached func(pid int) bool
	}{
		{"udstrace", []string{buildUdstrace(t), "trace", "--comm", "nothing", "-o", "/dev/null"}, hasReturnMultiLink},
		{"bpftrace", []string{bpftrace, "-e", "uretprobe:" + libc + ":malloc,uretprobe:" + libc + ":realloc {}"}, hasPerfUretprobes(2)},
	}
	for _, other := range others {
		t.Run(other.name, func(t *testing.T) {
			startAttached(t, other.argv, other.attached)
			for _, mode := range []string{"count", "full"} {
				t.Run(mode, func(t *testing.T) {
					o := testOptions(t)
					o.Mode = mode
					o.Command = []string{bins.AllocPattern, "3"}
					rep, err := Run(context.Background(), o)
					if err != nil {
						t.Fatal(err)
					}
					v, _ := decodeView(t, rep)
					if len(v.Processes) != 1 || *v.LostEvents != 0 {
						t.Fatalf("%d processes, %d lost events: want 1 and 0", len(v.Processes), *v.LostEvents)
					}
					pid := v.Processes[0].PID
					wantHeap := maps.Clone(want)
					if mode == "count" {
						delete(wantHeap, "free") // count mode does not trace frees
					}
					compareCounts(t, "allocpattern beside "+other.name, heapOnly(v.perKind(pid)), wantHeap)
					sites := heapOnly(v.siteTotals(pid))
					delete(sites, "free")
					delete(wantHeap, "free")
					compareCounts(t, "allocpattern sites beside "+other.name, sites, wantHeap)
				})
			}
		})
	}
}

// startAttached starts another tracer and waits until the kernel shows its return probes in
// place (attached reads the kernel's side, not the tracer's word); it is stopped at cleanup.
func startAttached(t *testing.T, argv []string, attached func(pid int) bool) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "other.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %v: %v", argv, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(2 * time.Minute); !attached(cmd.Process.Pid); time.Sleep(100 * time.Millisecond) {
		select {
		case <-exited:
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("%v ended before its return probes were attached:\n%s", argv, out)
		default:
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("%v: no return probe attached after 2 minutes:\n%s", argv, out)
		}
	}
}

// hasReturnMultiLink reports whether process pid holds a uretprobe_multi link: udstrace's
// return probe, in place (the kernel's fdinfo names the link's type).
func hasReturnMultiLink(pid int) bool {
	fds, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "fdinfo", "*"))
	for _, fd := range fds {
		if b, err := os.ReadFile(fd); err == nil && strings.Contains(string(b), "link_type:\turetprobe_multi") {
			return true
		}
	}
	return false
}

// hasPerfUretprobes reports whether process pid holds n uretprobe perf events (bpftool perf list).
func hasPerfUretprobes(n int) func(pid int) bool {
	return func(pid int) bool {
		out, _ := exec.Command("bpftool", "perf", "list").Output()
		got := 0
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "pid "+strconv.Itoa(pid)+" ") && strings.Contains(line, " uretprobe ") {
				got++
			}
		}
		return got >= n
	}
}

// libcPath is the libc file a dynamically linked program maps here.
func libcPath(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("/bin/cat", "/proc/self/maps").Output()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 6 && strings.HasPrefix(filepath.Base(f[5]), "libc.so") {
			return f[5]
		}
	}
	t.Fatalf("cat maps no libc:\n%s", out)
	return ""
}

// buildUdstrace builds the udstrace command into a temporary directory.
func buildUdstrace(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "udstrace")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/udstrace").CombinedOutput(); err != nil {
		t.Fatalf("building udstrace: %v\n%s", err, out)
	}
	return bin
}
