package report

import (
	"slices"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

func vfork(t uint64, parent, child uint32) *event.Proc {
	p := fork(t, parent, child)
	p.SharedVM = true
	return p
}

// siteAt is the site of pid at stack st.
func siteAt(t *testing.T, r *Report, pid uint32, kind string, st []event.Frame) Site {
	t.Helper()
	want := st[1].FileOffset
	for _, s := range r.Sites {
		if s.PID == pid && s.Kind == kind && len(s.Stack) > 1 && uint64(s.Stack[1].FileOffset) == want {
			return s
		}
	}
	t.Fatalf("no %s site of pid %d", kind, pid)
	return Site{}
}

// TestSharedSpace: a vfork child's block is its call and its outstanding block until the parent
// frees it, after the child exec'd; the free matches, and the child's new image is its own space.
func TestSharedSpace(t *testing.T) {
	const A, B = 0x1000, 0x2000
	b := NewBuilder(testOpts(Options{}))
	feed(t, b,
		al(1, 1, event.Malloc, 10, A, stMain),
		vfork(2, 1, 2),
		al(3, 2, event.Malloc, 20, B, stHelper), // the child, in the parent's space
	)
	if space, addrs := b.LiveAddrs(2); space != 1 || addrs != nil {
		t.Errorf("while shared: LiveAddrs(child) = %d %v, want space 1 and no blocks to forget", space, addrs)
	}
	feed(t, b,
		execp(4, 2, "/bin/true"),
		al(5, 2, event.Malloc, 30, A, stMain), // the new image: same address, another space
		al(6, 1, event.Free, 0, B, stMain),    // the parent frees the child's block
		al(7, 1, event.Free, 0, A, stMain),
	)
	if space, addrs := b.LiveAddrs(1); space != 1 || len(addrs) != 0 {
		t.Errorf("after the child left: LiveAddrs(parent) = %d %v, want 1 []", space, addrs)
	}
	r := b.Finish(&fakeSym{}, Meta{})
	if got := figsOf(procOf(t, r, 1)); got.frees != 2 || got.unmatched != 0 || got.outCount != 0 {
		t.Errorf("parent: %+v, want 2 frees, none unmatched, none outstanding", got)
	}
	if got := figsOf(procOf(t, r, 2)); got.allocs != 2 || got.outCount != 1 || got.outBytes != 30 {
		t.Errorf("child: %+v, want 2 calls, its new image's block outstanding", got)
	}
	if s := siteAt(t, r, 2, "malloc", stHelper); s.Count != 1 || s.OutstandingCount != 0 {
		t.Errorf("child's site in the parent's space: %+v, want 1 call, freed", s)
	}
}

// TestSharedSpaceAges: a live block of a shared space is aged once, though two processes run there.
func TestSharedSpaceAges(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, vfork(1, 1, 2), al(2, 2, event.Malloc, 20, 0x1000, stHelper))
	r := b.Finish(&fakeSym{}, Meta{Now: 10})
	if s := siteAt(t, r, 2, "malloc", stHelper); s.OutstandingCount != 1 || s.OutstandingOlderThanMinAge.Count != 1 {
		t.Errorf("site: outstanding %d, older than min age %d; want 1 and 1", s.OutstandingCount, s.OutstandingOlderThanMinAge.Count)
	}
}

// TestSharedSpaceLastLeaves: a CLONE_VM child outliving its parent keeps the space: the parent's
// exit retires nothing, the child frees the parent's block, and the last to leave retires the rest.
func TestSharedSpaceLastLeaves(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b,
		al(1, 1, event.Malloc, 10, 0x1000, stMain),
		al(2, 1, event.Malloc, 11, 0x2000, stHelper),
		vfork(3, 1, 2),
		exit(4, 1, 0),
		al(5, 2, event.Free, 0, 0x1000, stMain),
	)
	if space, addrs := b.LiveAddrs(2); space != 1 || !slices.Equal(addrs, []uint64{0x2000}) {
		t.Errorf("the last one in the space: LiveAddrs = %d %v, want 1 [0x2000]", space, addrs)
	}
	feed(t, b, exit(6, 2, 0))
	r := b.Finish(&fakeSym{}, Meta{})
	if got := figsOf(procOf(t, r, 2)); got.frees != 1 || got.unmatched != 0 {
		t.Errorf("child: %+v, want its free of the parent's block matched", got)
	}
	if got := figsOf(procOf(t, r, 1)); got.outCount != 1 || got.outBytes != 11 {
		t.Errorf("parent: %+v, want the block nobody freed outstanding", got)
	}
	if s := siteAt(t, r, 1, "malloc", stHelper); s.OutstandingOlderThanMinAge.Count != 1 {
		t.Errorf("the block left at the space's end is not retired on its site: %+v", s)
	}
}

// TestSharedSpaceFold: a folded child's block still live in its parent's space, freed after the
// fold, leaves the folded entry's outstanding figures.
func TestSharedSpaceFold(t *testing.T) {
	b := NewBuilder(testOpts(Options{MaxProcs: 1}))
	feed(t, b,
		al(1, 1, event.Malloc, 10, 0x1000, stMain),
		vfork(2, 1, 2),
		al(3, 2, event.Malloc, 20, 0x2000, stHelper),
		exit(4, 2, 0),
	)
	b.Settle() // the child folds
	feed(t, b,
		al(5, 1, event.Malloc, 10, 0x3000, stMain),
		al(6, 1, event.Free, 0, 0x2000, stMain),
	)
	r := b.Finish(&fakeSym{}, Meta{})
	folded := procOf(t, r, 0)
	if folded.FoldedProcesses != 1 || folded.OutstandingCount != 0 {
		t.Errorf("folded child: %d processes, %d outstanding; want 1, 0", folded.FoldedProcesses, folded.OutstandingCount)
	}
	if s := siteAt(t, r, 0, "malloc", stHelper); s.OutstandingCount != 0 {
		t.Errorf("folded child's site: %d outstanding, want 0", s.OutstandingCount)
	}
	if got := figsOf(procOf(t, r, 1)); got.unmatched != 0 || got.outCount != 2 {
		t.Errorf("parent: %+v, want nothing unmatched, its two blocks outstanding", got)
	}
}
