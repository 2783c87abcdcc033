package report

import (
	"strings"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

var echoRoles = map[uint32]Role{10: RoleServer, 11: RoleClientRaw, 12: RoleClientStdio}

// echoRun is the built-in workload as the tracer would see it: the server and raw client allocate only
// before their first socket call, the stdio client through fdopen and its stdio buffers.
func echoRun(extra ...any) (allocs []any, socks []any) {
	allocs = []any{
		al(5, 10, event.Malloc, 100, 0x10, stMain), // startup, before any socket call
		al(6, 11, event.Malloc, 100, 0x10, stMain),
		al(50, 12, event.Malloc, 16, 0x10, stMain),
		al(200, 12, event.Malloc, 472, 0x20, stFdopen),
		al(300, 12, event.Malloc, 4096, 0x30, stFgetc),
		al(400, 12, event.Malloc, 4096, 0x40, stFputs),
	}
	allocs = append(allocs, extra...)
	socks = []any{sock(10, 100, 22), sock(11, 110, 10), sock(12, 120, 10)}
	return allocs, socks
}

func TestVerdict(t *testing.T) {
	const holdsLine = "Conclusion: the AF_UNIX socket path allocated nothing in user space: server and raw client made 0 allocations across 32 socket syscalls; the stdio client's 3 allocations (8,664 B) came from fdopen and the stdio buffer (_IO_file_doallocate), none from socket calls."
	cases := []struct {
		name       string
		roles      map[uint32]Role
		extra      []any // more events
		socks      []any // replaces the socket counters when not nil
		holds      bool
		reason     string // substring
		conclusion string // exact, when set
		userAllocs uint64
	}{
		{name: "holds", roles: echoRoles, holds: true, conclusion: holdsLine},
		{name: "read as the allocator's frame 0 does not count", roles: echoRoles, holds: true,
			extra: []any{al(30, 12, event.Malloc, 8, 0x50, stReadAt0)}},
		{name: "raw client allocates after its first socket call", roles: echoRoles,
			extra:  []any{al(150, 11, event.Malloc, 64, 0x20, stHelper)},
			reason: "The raw client (pid 11) made 1 allocation (64 B) after its first socket call, from helper."},
		{name: "server mmaps after its first socket call", roles: echoRoles,
			extra:  []any{al(150, 10, event.Mmap, 4096, 0x7000, stMmap)},
			reason: "The server (pid 10) made 1 allocation (4,096 B) after its first socket call, from main."},
		{name: "an allocation with read on its stack", roles: echoRoles, userAllocs: 1,
			extra:  []any{al(450, 12, event.Malloc, 32, 0x50, stRead)},
			reason: "1 allocation (32 B) had a socket call (__libc_read) on their stack, at site #"},
		{name: "no socket syscalls", roles: echoRoles, socks: []any{},
			reason:     "No AF_UNIX socket syscall was observed",
			conclusion: "Conclusion: NOT shown that the AF_UNIX socket path allocates nothing in user space: no AF_UNIX socket syscall was observed, so the socket path was not exercised."},
		{name: "server made no socket syscall", roles: echoRoles, socks: []any{sock(10, 0, 0), sock(11, 110, 10), sock(12, 120, 10)},
			reason: "The server (pid 10) made no socket syscall."},
		{name: "a workload process was never seen", roles: map[uint32]Role{10: RoleServer, 11: RoleClientRaw, 12: RoleClientStdio, 99: RoleClientRaw},
			reason: "The raw client (pid 99) made no socket syscall."},
		{name: "no roles: processes with socket calls", holds: true,
			extra:      []any{al(500, 13, event.Malloc, 32, 0x50, stRead)}, // pid 13 made no socket call: not considered
			conclusion: "Conclusion: the AF_UNIX socket path allocated nothing in user space: no allocation passed through a socket call across 42 socket syscalls; the processes' 3 allocations (8,664 B) came from fdopen and the stdio buffer (_IO_file_doallocate), none from socket calls."},
		{name: "no roles: read on a stack", userAllocs: 1,
			extra:  []any{al(500, 11, event.Calloc, 32, 0x50, stRead)},
			reason: "1 allocation (32 B) had a socket call"},
	}
	for _, c := range cases {
		for _, socketsFirst := range []bool{false, true} {
			name := c.name
			if socketsFirst {
				name += "/counters first"
			}
			t.Run(name, func(t *testing.T) {
				allocs, socks := echoRun(c.extra...)
				if c.socks != nil {
					socks = c.socks
				}
				evs := append(append([]any{}, allocs...), socks...)
				if socketsFirst {
					evs = append(append([]any{}, socks...), allocs...)
				}
				r := build(t, Meta{Roles: c.roles}, evs...)
				sp := r.SocketPath
				if sp.Holds != c.holds {
					t.Errorf("holds = %v, reason %q", sp.Holds, sp.Reason)
				}
				if !strings.Contains(sp.Reason, c.reason) || (c.holds && sp.Reason != "") {
					t.Errorf("reason = %q, want %q", sp.Reason, c.reason)
				}
				if c.conclusion != "" && sp.Conclusion != c.conclusion {
					t.Errorf("conclusion:\n got %s\nwant %s", sp.Conclusion, c.conclusion)
				}
				if sp.UserAllocations != c.userAllocs {
					t.Errorf("user_allocations = %d, want %d", sp.UserAllocations, c.userAllocs)
				}
			})
		}
	}
}

func TestVerdictSources(t *testing.T) {
	allocs, socks := echoRun()
	r := build(t, Meta{Roles: echoRoles}, append(allocs, socks...)...)
	sp := r.SocketPath
	if len(sp.Processes) != 3 || sp.Processes[0].Role != RoleServer || sp.Processes[2].Role != RoleClientStdio {
		t.Fatalf("processes = %+v", sp.Processes)
	}
	stdio := sp.Processes[2]
	if stdio.AllocsAfterFirstCall != 3 || stdio.BytesAfterFirstCall != 8664 || stdio.Syscalls != 10 || stdio.SyscallsByName["read"] != 9 {
		t.Errorf("stdio = %+v", stdio)
	}
	want := []Source{
		{Function: "_IO_file_doallocate", Entry: "fgetc", Caller: "main", Kind: "malloc", Count: 1, Bytes: 4096},
		{Function: "_IO_file_doallocate", Entry: "fputs", Caller: "main", Kind: "malloc", Count: 1, Bytes: 4096},
		{Function: "_IO_new_fdopen", Entry: "_IO_new_fdopen", Caller: "main", Kind: "malloc", Count: 1, Bytes: 472},
	}
	for i, s := range stdio.Sources {
		s.Site = 0
		if i >= len(want) || s != want[i] {
			t.Errorf("source %d = %+v", i, s)
		}
	}
	if sp.Syscalls != 42 || sp.Processes[0].AllocsAfterFirstCall != 0 {
		t.Errorf("syscalls = %d, server = %+v", sp.Syscalls, sp.Processes[0])
	}
}

func TestVerdictTimelineCap(t *testing.T) {
	evs := []any{}
	for i := range uint64(6) {
		evs = append(evs, al(10*(i+1), 1, event.Malloc, 1, 0x10*(i+1), stMain))
	}
	for _, c := range []struct {
		first uint64
		after uint64
		upper bool
	}{{first: 25, after: 4}, {first: 35, after: 4, upper: true}, {first: 5, after: 6}} {
		b := NewBuilder(testOpts(Options{MaxTimeline: 2}))
		feed(t, b, evs...)
		feed(t, b, sock(1, c.first, 3))
		x := b.Finish(&fakeSym{}, Meta{}).SocketPath.Processes[0]
		if x.AllocsAfterFirstCall != c.after || x.AfterIsUpperBound != c.upper {
			t.Errorf("first %d: after %d upper %v, want %d %v", c.first, x.AllocsAfterFirstCall, x.AfterIsUpperBound, c.after, c.upper)
		}
	}
}

func TestNormalizeFunc(t *testing.T) {
	for in, want := range map[string]string{
		"read": "read", "__libc_read": "read", "__read": "read", "__GI___libc_read": "read",
		"__read_nocancel": "read", "__GI___close_nocancel": "close", "__libc_sendmsg": "sendmsg",
		"accept4": "accept4", "__libc_connect": "connect", "read@@GLIBC_2.2.5": "read", "_IO_file_read": "IO_file_read",
	} {
		if got := normalizeFunc(in); got != want {
			t.Errorf("normalizeFunc(%q) = %q, want %q", in, got, want)
		}
	}
	for _, n := range []string{"_IO_file_read", "readdir", "fread", "__libc_malloc", ""} {
		if isSocketFunc(n) {
			t.Errorf("%q counted as a socket function", n)
		}
	}
}
