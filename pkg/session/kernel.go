package session

import (
	"fmt"
	"unsafe"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/symbolize"
)

// KernelDefault, KernelOn, KernelOff are Options.Kernel's values: the default turns the kernel
// half on for the echo workload only.
const (
	KernelDefault = ""
	KernelOn      = "on"
	KernelOff     = "off"
)

// kernelWanted says whether a trace with opts watches the kernel's own allocations.
func kernelWanted(opts Options) bool {
	switch opts.Kernel {
	case KernelOn:
		return true
	case KernelOff:
		return false
	}
	return opts.Workload == "echo" && opts.Mode != "count"
}

// kernelStacks names each distinct kernel stack once, from kallsyms, and numbers it.
type kernelStacks struct {
	ids    map[string]int64
	frames [][]report.KernelFrame // by id
}

// Kernel hands a kernel allocation or free to the builder, its stack named the first time it is seen.
func (h *handler) Kernel(k *event.Kernel) {
	s := h.s
	if k.End {
		id := k.UserStack
		if k.UserRaw && id != 0 {
			if frames, ok := s.stacks.get(id); ok {
				if named, changed := s.maps.ResolveRaw(k.PID, frames); changed {
					id = s.stacks.internFlags(named, false)
				}
			}
		}
		s.bmu.Lock()
		s.builder.KernelCallEnd(k.TID, k.Seq, id)
		s.bmu.Unlock()
		return
	}
	if k.Free {
		s.bmu.Lock()
		s.builder.KernelFree(k)
		s.bmu.Unlock()
		return
	}
	h.name(&event.Alloc{PID: k.PID}) // a process first seen here (attach, system-wide) gets its name
	id, frames := s.kernelFrames(k.Frames)
	s.bmu.Lock()
	s.builder.KernelAlloc(k, id, frames)
	s.bmu.Unlock()
}

func (s *Session) kernelFrames(addrs []uint64) (int64, []report.KernelFrame) {
	if len(addrs) == 0 {
		return -1, nil
	}
	ks := &s.kstacks
	if ks.ids == nil {
		ks.ids = map[string]int64{}
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&addrs[0])), 8*len(addrs))
	if id, ok := ks.ids[string(raw)]; ok {
		return id, ks.frames[id]
	}
	named, err := symbolize.KernelSymbols().Frames(addrs)
	if err != nil {
		s.warnOnce(fmt.Sprintf("naming kernel frames: %v", err))
	}
	out := make([]report.KernelFrame, len(addrs))
	for i, a := range addrs {
		n := symbolize.KernelFrame{Addr: a, Module: "vmlinux"}
		if i < len(named) {
			n = named[i]
		}
		out[i] = report.KernelFrame{Frame: i, Addr: a, Module: n.Module, Function: n.Function, Offset: n.Offset, Symbol: n.Symbol()}
	}
	id := int64(len(ks.frames))
	ks.ids[string(raw)] = id
	ks.frames = append(ks.frames, out)
	return id, out
}

// kernelMeta reads the kernel half's counters for the report; nil when it is off.
func (s *Session) kernelMeta() *report.KernelMeta {
	if !kernelWanted(s.opts) {
		return nil
	}
	st, err := s.tracer.KernelStats()
	if err != nil {
		s.warn("%v", err)
	}
	m := &report.KernelMeta{IRQ: st.IRQ, LiveFull: st.LiveFull, NoStack: st.NoStack, Deep: st.Deep, RingLost: st.RingLost}
	if s.opts.Workload == "echo" {
		m.Messages = s.opts.Messages
	}
	return m
}
