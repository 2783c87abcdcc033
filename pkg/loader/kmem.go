package loader

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/udstrace/udstrace/pkg/event"
)

// The kernel's side (--kernel, bpf/kmem.h): six small programs on the kmem tracepoints, loaded
// after the rest against the same maps (they reach no stack code: a few ms of verifying), and
// attached last.

const (
	evKmem  = 32
	evKfree = 33
	evKsys  = 34

	kfUntracked = 1
	kfIRQ       = 2
	kfKthread   = 8
)

type kmemPrograms struct {
	Kmalloc   *ebpf.Program `ebpf:"kmem_kmalloc"`
	SlabAlloc *ebpf.Program `ebpf:"kmem_slab_alloc"`
	PageAlloc *ebpf.Program `ebpf:"kmem_page_alloc"`
	Kfree     *ebpf.Program `ebpf:"kmem_kfree"`
	SlabFree  *ebpf.Program `ebpf:"kmem_slab_free"`
	PageFree  *ebpf.Program `ebpf:"kmem_page_free"`
}

func (p *kmemPrograms) all() []*ebpf.Program {
	return []*ebpf.Program{p.Kmalloc, p.SlabAlloc, p.PageAlloc, p.Kfree, p.SlabFree, p.PageFree}
}

// ErrKernelCount: count mode aggregates user stacks in the kernel and traces no syscall exits,
// which the socket calls' kernel allocations need.
var ErrKernelCount = errors.New("--kernel needs full mode, not count mode")

// loadKmem returns the load of the kmem programs, run beside the other programs into the maps
// created first (loadFull).
func (t *Tracer) loadKmem(spec *ebpf.CollectionSpec) func(*ebpf.CollectionOptions) error {
	return func(withMaps *ebpf.CollectionOptions) error {
		if err := spec.Copy().LoadAndAssign(&t.kmem, withMaps); err != nil {
			return fmt.Errorf("loading the kmem programs: %w", err)
		}
		return nil
	}
}

// attachKmem attaches them: the frees first, so no object allocated is missed by its free.
func (t *Tracer) attachKmem() error {
	p := &t.kmem
	for _, prog := range []*ebpf.Program{p.Kfree, p.SlabFree, p.PageFree, p.Kmalloc, p.SlabAlloc, p.PageAlloc} {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return fmt.Errorf("attaching %s: %w", prog, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// KernelStats are bpf/kmem.h's counters: what the kernel half left out or could not complete.
type KernelStats struct {
	IRQ      uint64 // allocations in interrupt context while a traced task was current: not attributed
	LiveFull uint64 // allocations whose free cannot be paired (the live-object table was full)
	NoStack  uint64 // allocations sent without a kernel stack
	Deep     uint64 // kernel stacks cut at their 32 innermost frames (the event kept)
	RingLost uint64 // kernel allocations and frees the ring had no room for (also in Lost.Ring)
}

// KernelStats sums the per-CPU kmem counters; zero when --kernel is off.
func (t *Tracer) KernelStats() (KernelStats, error) {
	var out KernelStats
	if t.objs.KmemStats == nil {
		return out, nil
	}
	for i, p := range []*uint64{&out.IRQ, &out.LiveFull, &out.NoStack, &out.Deep, &out.RingLost} {
		var perCPU []uint64
		if err := t.objs.KmemStats.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("reading kmem counters: %w", err)
		}
		for _, n := range perCPU {
			*p += n
		}
	}
	return out, nil
}

// KernelHandler is what a Handler implements to hear of kernel allocations (--kernel).
type KernelHandler interface {
	Kernel(k *event.Kernel)
}

func (r *record) decodeKsys(raw []byte) bool {
	if len(raw) < int(unsafe.Sizeof(udstraceKsysEvent{})) {
		return false
	}
	ev := (*udstraceKsysEvent)(unsafe.Pointer(&raw[0]))
	r.kmem = event.Kernel{End: true, PID: ev.Pid, TID: ev.Tid, Seq: ev.Seq, UserStack: ev.Stack,
		UserRaw: ev.Flags&flagStackRaw != 0, Frames: r.kmem.Frames[:0]}
	return true
}

func (r *record) decodeKmem(raw []byte) bool {
	const freeSize = int(unsafe.Offsetof(udstraceKmemEvent{}.Frames))
	if len(raw) < freeSize || (raw[0] == evKmem && len(raw) < int(unsafe.Sizeof(udstraceKmemEvent{}))) {
		return false
	}
	ev := (*udstraceKmemEvent)(unsafe.Pointer(&raw[0]))
	k := event.Kernel{Free: ev.Type == evKfree, Kind: event.KernelKind(ev.Kind), Time: ev.Ts, PID: ev.Pid,
		TID: ev.Tid, Addr: ev.Addr, Req: ev.BytesReq, Bytes: ev.BytesAlloc, CallSite: ev.CallSite,
		Name: cString(ev.Name[:]), Untracked: ev.Flags&kfUntracked != 0,
		IRQ: ev.Flags&kfIRQ != 0, KThread: ev.Flags&kfKthread != 0}
	if k.Free {
		k.Owner = uint32(ev.Sys)
	} else {
		k.Sys, k.Seq = int64(ev.Sys), ev.Seq
		if ev.Sock != 0 {
			k.Socket, k.InSocket = event.SocketCall(ev.Sock-1), true
		}
	}
	frames := r.kmem.Frames[:0] // reused: the handler copies what it keeps
	r.kmem = k
	if !k.Free {
		r.kmem.Frames = append(frames, ev.Frames[:min(int(ev.Nframes), len(ev.Frames))]...)
	}
	return true
}
