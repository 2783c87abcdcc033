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
	p := b.procAt(pid, b.latest)
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
