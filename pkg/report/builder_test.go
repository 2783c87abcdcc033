package report

import (
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// figs is the subset of a process's totals a case checks.
type figs struct {
	allocs, allocBytes, frees, unmatched, outCount, outBytes uint64
	mmap, munmap, mremap, brk, brkBytes                      uint64
}

func figsOf(p Process) figs {
	return figs{p.Allocations, p.AllocatedBytes, p.Frees, p.UnmatchedFrees, p.OutstandingCount, p.OutstandingBytes,
		p.MmapCalls, p.MunmapCalls, p.MremapCalls, p.BrkCalls, p.BrkBytes}
}

func TestAggregation(t *testing.T) {
	const A, B, C = 0x1000, 0x2000, 0x3000
	cases := []struct {
		name  string
		evs   []any
		pid   uint32
		want  figs
		check func(t *testing.T, r *Report)
	}{
		{name: "malloc then free", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), al(2, 1, event.Free, 0, A, stMain)},
			want: figs{allocs: 1, allocBytes: 10, frees: 1}},
		{name: "calloc stays outstanding", pid: 1,
			evs:  []any{al(1, 1, event.Calloc, 4*8, A, stMain)},
			want: figs{allocs: 1, allocBytes: 32, outCount: 1, outBytes: 32}},
		{name: "posix_memalign ok and failed", pid: 1,
			evs:  []any{al(1, 1, event.PosixMemalign, 64, A, stMain), failed(al(2, 1, event.PosixMemalign, 1<<40, 0, stMain))},
			want: figs{allocs: 2, allocBytes: 64 + 1<<40, outCount: 1, outBytes: 64},
			check: func(t *testing.T, r *Report) {
				s := r.Sites[0]
				if s.Count != 2 || s.Failed != 1 || s.Kind != "posix_memalign" || s.OutstandingBytes != 64 {
					t.Errorf("site = %+v", s)
				}
				if c := procOf(t, r, 1).HeapByKind["posix_memalign"]; c != (CallCount{2, 64 + 1<<40, 1}) {
					t.Errorf("heap_calls_by_kind = %+v", c)
				}
			}},
		{name: "realloc(NULL, n) allocates", pid: 1,
			evs:  []any{re(1, 1, event.Realloc, 0, 20, A, false)},
			want: figs{allocs: 1, allocBytes: 20, outCount: 1, outBytes: 20}},
		{name: "realloc moves the block", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), re(2, 1, event.Realloc, A, 30, B, false), al(3, 1, event.Free, 0, A, stMain)},
			want: figs{allocs: 2, allocBytes: 40, frees: 1, unmatched: 1, outCount: 1, outBytes: 30},
			check: func(t *testing.T, r *Report) {
				for _, s := range r.Sites {
					if (s.Kind == "malloc" && s.OutstandingCount != 0) || (s.Kind == "realloc" && s.OutstandingBytes != 30) {
						t.Errorf("site %s outstanding %d/%d", s.Kind, s.OutstandingCount, s.OutstandingBytes)
					}
				}
			}},
		{name: "realloc in place", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), re(2, 1, event.Realloc, A, 15, A, false)},
			want: figs{allocs: 2, allocBytes: 25, outCount: 1, outBytes: 15}},
		{name: "realloc(p, 0) frees", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), re(2, 1, event.Realloc, A, 0, 0, true)},
			want: figs{allocs: 2, allocBytes: 10, frees: 1}},
		{name: "failed realloc keeps the old block", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), re(2, 1, event.Realloc, A, 1<<50, 0, true)},
			want: figs{allocs: 2, allocBytes: 10 + 1<<50, outCount: 1, outBytes: 10},
			check: func(t *testing.T, r *Report) {
				if c := procOf(t, r, 1).HeapByKind["realloc"]; c.Failed != 1 {
					t.Errorf("realloc failed = %d", c.Failed)
				}
			}},
		{name: "reallocarray behaves like realloc", pid: 1,
			evs:  []any{re(1, 1, event.ReallocArray, 0, 12, A, false), re(2, 1, event.ReallocArray, A, 24, B, false), re(3, 1, event.ReallocArray, B, 0, 0, false)},
			want: figs{allocs: 3, allocBytes: 36, frees: 1}},
		{name: "free of unknown block and free(NULL)", pid: 1,
			evs:  []any{al(1, 1, event.Free, 0, A, stMain), al(2, 1, event.Free, 0, 0, stMain)},
			want: figs{frees: 1, unmatched: 1},
			check: func(t *testing.T, r *Report) {
				if c := procOf(t, r, 1).HeapByKind["free"]; c.Calls != 2 {
					t.Errorf("free calls = %d", c.Calls)
				}
				if len(r.Sites) != 0 {
					t.Errorf("frees made sites: %+v", r.Sites)
				}
			}},
		{name: "mmap inside malloc is not counted twice", pid: 1,
			evs: []any{inside(al(1, 1, event.Mmap, 1<<20+4096, C, stMmap), event.Malloc), al(1, 1, event.Malloc, 1<<20, A, stMain),
				inside(al(2, 1, event.Munmap, 1<<20+4096, C, stMmap), event.Free), al(2, 1, event.Free, 0, A, stMain),
				inside(shrink(al(3, 1, event.Brk, 4096, 0, stBrk)), event.Malloc), inside(al(3, 1, event.Brk, 1<<17, 0, stBrk), event.Malloc)},
			want: figs{allocs: 1, allocBytes: 1 << 20, frees: 1},
			check: func(t *testing.T, r *Report) {
				p := procOf(t, r, 1)
				if p.InsideAllocator["malloc"] != (KernelReqs{3, 1<<20 + 4096 + 1<<17}) || p.InsideAllocator["free"] != (KernelReqs{1, 0}) {
					t.Errorf("inside_allocator = %+v", p.InsideAllocator)
				}
			}},
		{name: "user mmap, munmap, partial munmap, unknown munmap", pid: 1,
			evs: []any{al(1, 1, event.Mmap, 8192, A, stMmap), al(2, 1, event.Munmap, 8192, A, stMmap),
				al(3, 1, event.Mmap, 3*4096, B, stMmap), al(4, 1, event.Munmap, 4096, B, stMmap), al(5, 1, event.Munmap, 4096, 0x9000, stMmap),
				failed(al(6, 1, event.Mmap, 4096, 0, stMmap))},
			want: figs{allocs: 3, allocBytes: 8192 + 3*4096 + 4096, outCount: 1, outBytes: 2 * 4096, mmap: 3, munmap: 3},
			check: func(t *testing.T, r *Report) {
				if r.Sites[0].Failed != 1 || r.Sites[0].Count != 3 {
					t.Errorf("site = %+v", r.Sites[0])
				}
			}},
		{name: "trimmed region can be unmapped at its new start", pid: 1,
			evs:  []any{al(1, 1, event.Mmap, 3*4096, B, stMmap), al(2, 1, event.Munmap, 4096, B, stMmap), al(3, 1, event.Munmap, 2*4096, B+4096, stMmap)},
			want: figs{allocs: 1, allocBytes: 3 * 4096, mmap: 1, munmap: 2}},
		{name: "mremap moves a region", pid: 1,
			evs: []any{al(1, 1, event.Mmap, 4096, A, stMmap),
				func() *event.Alloc {
					a := al(2, 1, event.Mremap, 8192, B, stMmap)
					a.OldAddr, a.OldSize = A, 4096
					return a
				}()},
			want: figs{allocs: 2, allocBytes: 4096 + 8192, outCount: 1, outBytes: 8192, mmap: 1, mremap: 1}},
		{name: "brk growth, query and shrink", pid: 1,
			evs: []any{al(1, 1, event.Brk, 0, 0, stBrk), al(2, 1, event.Brk, 1<<16, 0, stBrk), shrink(al(3, 1, event.Brk, 4096, 0, stBrk)),
				al(4, 1, event.Brk, ^uint64(4095), 0, stBrk)},
			want: figs{allocs: 1, allocBytes: 1 << 16, brk: 4, brkBytes: 1 << 16}},
		{name: "blocks are per pid", pid: 2,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), al(2, 2, event.Free, 0, A, stMain)},
			want: figs{frees: 1, unmatched: 1},
			check: func(t *testing.T, r *Report) {
				if f := figsOf(procOf(t, r, 1)); f.outCount != 1 || f.outBytes != 10 {
					t.Errorf("pid 1 = %+v", f)
				}
			}},
		{name: "outstanding at exit survives pid reuse", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), exit(2, 1, 3<<8), fork(3, 7, 1), al(4, 1, event.Free, 0, A, stMain)},
			want: figs{frees: 1, unmatched: 1},
			check: func(t *testing.T, r *Report) {
				old := r.Processes[0]
				if old.PID != 1 || old.OutstandingBytes != 10 || old.ExitCode == nil || *old.ExitCode != 3 || len(r.Processes) != 2 {
					t.Errorf("processes = %+v", r.Processes)
				}
			}},
		{name: "forked child frees its parent's block", pid: 2,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), fork(2, 1, 2), al(3, 2, event.Free, 0, A, stMain), al(4, 2, event.Free, 0, A, stMain)},
			want: figs{frees: 2, unmatched: 1},
			check: func(t *testing.T, r *Report) {
				if p := procOf(t, r, 1); p.OutstandingBytes != 10 {
					t.Errorf("parent outstanding = %d", p.OutstandingBytes)
				}
				if p := procOf(t, r, 2); p.PPID != 1 {
					t.Errorf("ppid = %d", p.PPID)
				}
			}},
		{name: "exec drops the old image's blocks", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), execp(2, 1, "/bin/true"), al(3, 1, event.Free, 0, A, stMain)},
			want: figs{allocs: 1, allocBytes: 10, frees: 1, unmatched: 1, outCount: 1, outBytes: 10},
			check: func(t *testing.T, r *Report) {
				if p := procOf(t, r, 1); p.Exe != "/bin/true" || p.Comm != "comm" || p.Exited || p.ExitCode != nil {
					t.Errorf("process = %+v", p)
				}
			}},
		{name: "same code, another mapping address: one site", pid: 1,
			evs: []any{al(1, 1, event.Malloc, 1, A, stMain), al(2, 1, event.Malloc, 2, B, func() []event.Frame {
				st := append([]event.Frame(nil), stMain...)
				st[0].Addr += 0x100000
				return st
			}()), al(3, 1, event.Malloc, 4, C, stHelper), al(4, 1, event.Calloc, 8, 0x4000, stMain)},
			want: figs{allocs: 4, allocBytes: 15, outCount: 4, outBytes: 15},
			check: func(t *testing.T, r *Report) {
				if len(r.Sites) != 3 || r.Sites[0].Kind != "calloc" || r.Sites[2].Count != 2 || r.Sites[2].Bytes != 3 {
					t.Errorf("sites = %+v", r.Sites)
				}
			}},
		{name: "killed by a signal", pid: 1,
			evs:  []any{al(1, 1, event.Malloc, 10, A, stMain), exit(2, 1, 9)},
			want: figs{allocs: 1, allocBytes: 10, outCount: 1, outBytes: 10},
			check: func(t *testing.T, r *Report) {
				if p := procOf(t, r, 1); p.ExitCode != nil || p.ExitSignal != 9 || !p.Exited {
					t.Errorf("exit = %v %d", p.ExitCode, p.ExitSignal)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := build(t, Meta{}, c.evs...)
			if got := figsOf(procOf(t, r, c.pid)); got != c.want {
				t.Errorf("pid %d:\n got %+v\nwant %+v", c.pid, got, c.want)
			}
			var sum uint64
			for _, s := range r.Sites {
				sum += s.Count
			}
			var allocs uint64
			for _, p := range r.Processes {
				allocs += p.Allocations
			}
			if sum != allocs {
				t.Errorf("site counts %d != process allocations %d", sum, allocs)
			}
			if c.check != nil {
				c.check(t, r)
			}
		})
	}
}

func TestSitesSortedAndSymbolizedOnce(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	for i := range uint64(50) {
		feed(t, b, al(i, 1, event.Malloc, 8, 0x1000+i*16, stMain), al(i, 1, event.Malloc, 100, 0x9000+i*128, stHelper))
	}
	feed(t, b, al(60, 1, event.Malloc, 5000, 0x100000, stFdopen), al(61, 2, event.Malloc, 5000, 0x100000, stFdopen))
	sym := &fakeSym{}
	r := b.Finish(sym, Meta{})
	if sym.calls != 5 { // malloc, main, _start, helper, fdopen
		t.Errorf("Symbolize called %d times, want 5", sym.calls)
	}
	var ids []int
	for _, s := range r.Sites {
		ids = append(ids, s.ID)
	}
	if want := []int{2, 3, 4, 1}; !equal(ids, want) {
		t.Errorf("site order %v, want %v", ids, want)
	}
	st := r.Sites[1].Stack
	if st[0].Symbol != "libc.so.6!malloc+0x10" || st[1].Symbol != "libc.so.6!_IO_new_fdopen+0x10" || st[1].File != "x.c" {
		t.Errorf("stack = %+v", st)
	}
}

func TestSymbolTextFallbacks(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	unknown := fr(exePath, 0x4242)
	feed(t, b, al(1, 1, event.Malloc, 1, 0x10, stk(fMalloc, unknown, fAnon)))
	r := b.Finish(&fakeSym{}, Meta{})
	st := r.Sites[0].Stack
	if st[1].Symbol != "echo-client+0x4242" || st[2].Symbol != "0xdead0000" || st[2].Module != "" {
		t.Errorf("stack = %+v", st)
	}
	r = b.Finish(nil, Meta{})
	if st := r.Sites[0].Stack; st[0].Symbol != "libc.so.6+0x100" || len(r.Warnings) == 0 {
		t.Errorf("no symbolizer: %+v, warnings %q", st[0], r.Warnings)
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestUnmatchedFreesByCaller: a free of a block never seen allocated is counted at its caller,
// resolved through Options.CallerStack only for such frees; matched frees never ask.
func TestUnmatchedFreesByCaller(t *testing.T) {
	asked := 0
	b := NewBuilder(testOpts(Options{CallerStack: func(pid uint32, ret uint64) uint64 {
		asked++
		return sid(stk(fr(libcPath, ret)))
	}}))
	free := func(tm uint64, addr, caller uint64) *event.Alloc {
		a := al(tm, 1, event.Free, 0, addr, nil)
		a.Caller = caller
		return a
	}
	feed(t, b,
		al(1, 1, event.Malloc, 10, 0x10, stMain),
		free(2, 0x10, 0x400),                       // matched
		free(3, 0x20, 0x300), free(4, 0x30, 0x300), // two unmatched from one caller
		free(5, 0x40, 0x320), // and one from another
		free(6, 0x50, 0),     // no caller known: counted, not listed
	)
	r := b.Finish(&fakeSym{}, Meta{})
	if asked != 3 {
		t.Errorf("CallerStack asked %d times, want 3 (the unmatched frees with a caller)", asked)
	}
	p := procOf(t, r, 1)
	if p.Frees != 5 || p.UnmatchedFrees != 4 {
		t.Errorf("frees %d, unmatched %d; want 5 and 4", p.Frees, p.UnmatchedFrees)
	}
	got := map[string]uint64{}
	for _, f := range r.UnmatchedFreeSites {
		got[f.Caller[len(f.Caller)-1].Function] = f.Count
	}
	if len(got) != 2 || got["_IO_file_doallocate"] != 2 || got["_IO_new_file_underflow"] != 1 {
		t.Errorf("unmatched free sites %v, want 2 at _IO_file_doallocate and 1 at _IO_new_file_underflow", got)
	}
	if len(r.Sites) != 1 {
		t.Errorf("%d allocation sites, want 1: free sites are listed apart", len(r.Sites))
	}
}
