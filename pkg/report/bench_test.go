package report

import (
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// benchEvents makes n distinct 20-frame stacks and a malloc/free pair per stack, as the loader would decode them.
func benchEvents(n int) []*event.Alloc {
	var evs []*event.Alloc
	mods := []string{"/usr/lib/libc.so.6", "/usr/bin/prog", "/usr/lib/libfoo.so"}
	keys := []string{"8:1:100", "8:1:200", "8:1:300"} // the loader shares one key string per module
	for i := range n {
		st := make([]event.Frame, 20)
		for j := range st {
			st[j] = event.Frame{Addr: uint64(0x7f0000000000 + j*0x1000 + i), Module: mods[j%3], ModuleKey: keys[j%3],
				FileOffset: uint64(j*0x1000 + i), Return: true}
		}
		addr := uint64(0x10000 + i*64)
		evs = append(evs,
			&event.Alloc{Time: uint64(2 * i), PID: 42, Comm: "bench", Kind: event.Malloc, Size: 48, Addr: addr, StackID: sid(st)},
			&event.Alloc{Time: uint64(2*i + 1), PID: 42, Comm: "bench", Kind: event.Free, Addr: addr, StackID: sid(st)})
	}
	return evs
}

// BenchmarkAlloc measures one Alloc call (half mallocs, half frees) with 20-frame stacks over 64 sites.
func BenchmarkAlloc(b *testing.B) {
	evs := benchEvents(64)
	bl := NewBuilder(testOpts(Options{}))
	bl.Sockets(event.SocketStats{PID: 42, FirstTime: 1}) // a settled process: no timeline growth across b.N
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ev := evs[i%len(evs)]
		bl.Alloc(ev)
	}
}

// BenchmarkAllocTimeline is the same while the process's socket counters are not known yet.
func BenchmarkAllocTimeline(b *testing.B) {
	evs := benchEvents(64)
	bl := NewBuilder(testOpts(Options{}))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		bl.Alloc(evs[i%len(evs)])
	}
}
