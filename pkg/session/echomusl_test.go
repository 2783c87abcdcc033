package session

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

const muslLibc = "/usr/lib/x86_64-linux-musl/libc.so" // musl-tools' libc (ld-musl is a link to it)

// TestEchoOnMusl: the echo experiment built against musl. bpftrace, an independent tracer,
// counts every call of musl's malloc and free by pid during the same run: udstrace's counts per
// process equal its. The verdict holds (the server and the raw client allocate nothing; the stdio
// client's allocation is fdopen's) and every process names musl as its allocator.
func TestEchoOnMusl(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	if bins.ClientMusl == "" {
		t.Fatal("udstrace was built without musl-gcc: install musl-tools (make test does) and rebuild")
	}
	cond := `/comm == "echo-client-mus" || comm == "echo-server-mus"/`
	oracle := startBpftrace(t, `BEGIN { printf("ready\n"); }
uprobe:`+muslLibc+`:malloc `+cond+` { @m[pid] = count(); }
uprobe:`+muslLibc+`:free `+cond+` { @f[pid] = count(); }`)
	o := testOptions(t)
	o.Workload, o.EchoLibc = "echo", "musl"
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	_ = oracle.cmd.Process.Signal(syscall.SIGINT)
	_ = oracle.cmd.Wait()
	want := map[string]map[uint32]uint64{"malloc": {}, "free": {}}
	for _, m := range regexp.MustCompile(`@([mf])\[(\d+)\]: (\d+)`).FindAllStringSubmatch(oracle.out.String(), -1) {
		pid, _ := strconv.ParseUint(m[2], 10, 32)
		n, _ := strconv.ParseUint(m[3], 10, 64)
		want[map[string]string{"m": "malloc", "f": "free"}[m[1]]][uint32(pid)] = n
	}
	v, _ := decodeView(t, rep)
	for _, role := range []string{"server", "client-raw", "client-stdio"} {
		pid := v.pidOf(t, role)
		got := v.perKind(pid)
		for _, kind := range []string{"malloc", "free"} {
			if got[kind][0] != want[kind][pid] {
				t.Errorf("%s (pid %d): %d %s calls, bpftrace saw %d", role, pid, got[kind][0], kind, want[kind][pid])
			}
		}
		for _, p := range rep.Processes {
			if p.PID == pid && (p.Allocator == nil || p.Allocator.Name != "musl") {
				t.Errorf("%s: allocator %+v, want musl", role, p.Allocator)
			}
		}
	}
	if n := want["malloc"][v.pidOf(t, "client-stdio")]; n == 0 {
		t.Errorf("bpftrace saw no malloc in the stdio client: the oracle saw nothing\n%s", oracle.out.String())
	}
	if !v.SocketPath.Holds || v.SocketPath.UserAllocations != 0 {
		t.Errorf("socket-path verdict on musl: %+v", v.SocketPath)
	}
	stdio := v.pidOf(t, "client-stdio")
	for _, s := range v.Sites {
		if s.PID != stdio || s.Kind != "malloc" {
			continue
		}
		var names []string
		for _, f := range s.Stack {
			names = append(names, f.Symbol)
		}
		// Debian's musl libc.so has unwind tables for its few assembly functions only: a stack
		// stops at the musl function that called malloc (README, Limits).
		if len(names) < 2 || !strings.Contains(names[1], "fdopen") {
			t.Errorf("the stdio client's malloc is not called from fdopen: %v", names)
		}
	}
}
