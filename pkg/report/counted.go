package report

import "github.com/udstrace/udstrace/pkg/event"

// Counted records calls aggregated in the kernel (count mode): count calls of kind at one
// stack, asking for bytes in all. No blocks are tracked and no times are known, so such
// calls have no outstanding figures and take no part in the verdict's "after the first
// socket call" count.
func (b *Builder) Counted(pid uint32, comm string, kind event.Kind, stack []event.Frame, count, bytes uint64) {
	if int(kind) >= kindSlots || kind == event.KindNone || count == 0 {
		return
	}
	p := b.countedProc(pid)
	if comm != "" && p.comm == "" {
		p.comm = comm
	}
	c := &p.heap[kind]
	c.Calls += count
	c.Bytes += bytes
	s := b.site(p, kind, stack)
	s.count += count
	s.bytes += bytes
	p.allocs += count
	p.allocBytes += bytes
}

// Totals records a process's exact calls and bytes of one allocator function without a site:
// in sampled count mode the sites come from Estimated and only the totals are exact.
func (b *Builder) Totals(pid uint32, kind event.Kind, calls, bytes uint64) {
	if int(kind) >= kindSlots || kind == event.KindNone || calls == 0 {
		return
	}
	p := b.countedProc(pid)
	c := &p.heap[kind]
	c.Calls += calls
	c.Bytes += bytes
	p.allocs += calls
	p.allocBytes += bytes
}

// Estimated records a sampled site's estimated calls and bytes; the process totals come from Totals.
func (b *Builder) Estimated(pid uint32, comm string, kind event.Kind, stack []event.Frame, calls, bytes uint64) {
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
