package report

import (
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

func onThread(a *event.Alloc, tid uint32) *event.Alloc { a.TID = tid; return a }

func rename(pid, tid uint32, name string) *event.Proc {
	return &event.Proc{Kind: event.ProcRename, PID: pid, TID: tid, Comm: name}
}

// TestSiteThreads: a site one thread called names it (its latest name; the leader's is the
// process's), a site several threads called counts them, and count mode's sites (no thread
// known) say nothing; a leader's rename renames the process.
func TestSiteThreads(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b,
		execp(1, 10, "/bin/x"),
		rename(10, 11, "early"),
		onThread(al(2, 10, event.Malloc, 8, 0x100, stHelper), 11),
		rename(10, 11, "worker"), // the latest name is reported
		onThread(al(3, 10, event.Malloc, 8, 0x200, stHelper), 11),
		onThread(al(4, 10, event.Malloc, 8, 0x300, stMain), 11),
		onThread(al(5, 10, event.Malloc, 8, 0x400, stMain), 12),
		onThread(al(6, 10, event.Malloc, 8, 0x500, stMain), 11),
		onThread(al(7, 10, event.Malloc, 8, 0x600, stMain), 10),
		onThread(al(8, 10, event.Calloc, 8, 0x700, stMain), 10),
		rename(10, 10, "lead"),
	)
	b.Counted(10, "", event.Realloc, sid(stMain), 3, 30)
	r := b.Finish(&fakeSym{}, Meta{})
	if p := procOf(t, r, 10); p.Comm != "lead" {
		t.Errorf("process comm %q, want the leader's latest name lead", p.Comm)
	}
	type th struct {
		tid     uint32
		thread  string
		threads int
	}
	want := map[string]th{"malloc@helper": {11, "worker", 1}, "malloc@main": {0, "", 3}, "calloc@main": {10, "lead", 1}, "realloc@main": {}}
	for _, s := range r.Sites {
		key := s.Kind + "@" + s.Stack[1].Function
		w, ok := want[key]
		if !ok {
			t.Errorf("unexpected site %s", key)
			continue
		}
		delete(want, key)
		if got := (th{s.TID, s.Thread, s.Threads}); got != w {
			t.Errorf("%s: %+v, want %+v", key, got, w)
		}
	}
	for k := range want {
		t.Errorf("no site %s", k)
	}
}
