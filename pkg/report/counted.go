package report

import "github.com/udstrace/udstrace/pkg/event"

// Counted records calls aggregated in the kernel (count mode): count calls of kind at one
// stack, asking for bytes in all. No blocks are tracked and no times are known, so such
// calls have no outstanding figures and take no part in the verdict's "after the first
// socket call" count.
func (b *Builder) Counted(pid uint32, comm string, kind event.Kind, stack uint64, count, bytes uint64) {
	if kind == event.KindNone || kind.IsFree() {
		return // not calls of an allocation function
	}
	b.Totals(pid, kind, count, bytes)
	b.Estimated(pid, comm, kind, stack, count, bytes)
}

// Totals records a process's exact calls and bytes of one allocator function without a site:
// with sampling the sites come from Estimated or weighted events, and only the totals are exact.
// KindNone counts the frees made by realloc(p, 0), which are not calls of free; free's bytes are
// the calls of free that released a block (all but free(NULL)).
func (b *Builder) Totals(pid uint32, kind event.Kind, calls, bytes uint64) {
	if int(kind) >= kindSlots || calls == 0 {
		return
	}
	p := b.countedProc(pid)
	if kind == event.KindNone {
		p.frees += calls
		return
	}
	c := &p.heap[kind]
	c.Calls += calls
	if kind.IsFree() {
		p.frees += bytes // free's bytes are the calls that released a block: not free(NULL)
		if kind == event.Free {
			p.nullFrees += calls - min(bytes, calls)
		}
		return
	}
	c.Bytes += bytes
	p.allocs += calls
	p.allocBytes += bytes
}

// weighted records a picked call of full mode with sampling: it stands for ev.Weight calls at its
// site and its block for as many blocks; the free of a picked block releases it. The process's
// calls, bytes and frees come from Totals.
func (b *Builder) weighted(p *proc, ev *event.Alloc) {
	k, w := ev.Kind, max(ev.Weight, 1)
	switch {
	case k.IsFree():
		if ev.Addr != 0 {
			p.release(p.live, ev.Addr, false)
		}
		return
	case !k.IsHeap():
		return
	}
	s := b.site(p, k, ev.StackID)
	s.thread(ev.TID)
	s.count += w
	s.bytes += w * ev.Size
	if ev.Failed {
		s.failed += w
		return
	}
	if ev.OldAddr != 0 {
		p.release(p.live, ev.OldAddr, false) // moved, resized or freed by realloc
	}
	if ev.Addr != 0 && !ev.Untracked {
		p.addBlocks(&p.live, s, ev.Addr, ev.Size, ev.Time, w)
	}
}

// Estimated records a sampled site's estimated calls and bytes; the process totals come from Totals.
func (b *Builder) Estimated(pid uint32, comm string, kind event.Kind, stack uint64, calls, bytes uint64) {
	if int(kind) >= kindSlots || kind == event.KindNone || calls == 0 {
		return
	}
	p := b.countedProc(pid)
	if comm != "" && p.comm == "" {
		p.comm = comm
	}
	s := b.site(p, kind, stack)
	s.count += calls
	s.bytes += bytes
}

// countedProc is where in-kernel aggregates of pid go: its latest incarnation, exited or not
// (they arrive at the end of the trace, after every exit).
func (b *Builder) countedProc(pid uint32) *proc {
	if p := b.cur[pid]; p != nil {
		return p
	}
	return b.newProc(pid)
}
