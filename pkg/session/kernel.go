package session

import (
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

// kernelStacks names kernel stack ids once each, from the tracer's stack map and kallsyms.
type kernelStacks struct {
	byID map[int64][]report.KernelFrame
}

// Kernel hands a kernel allocation or free to the builder, its stack named the first time its id is seen.
func (h *handler) Kernel(k *event.Kernel) {
	s := h.s
	if k.Free {
		s.bmu.Lock()
		s.builder.KernelFree(k)
		s.bmu.Unlock()
		return
	}
	frames := s.kernelFrames(k.StackID)
	s.bmu.Lock()
	s.builder.KernelAlloc(k, frames)
	s.bmu.Unlock()
}

func (s *Session) kernelFrames(id int64) []report.KernelFrame {
	if id < 0 {
		return nil
	}
	if s.kstacks.byID == nil {
		s.kstacks.byID = map[int64][]report.KernelFrame{}
	}
	if f, ok := s.kstacks.byID[id]; ok {
		return f
	}
	addrs, err := s.tracer.KernelStack(id)
	if err != nil {
		s.warn("%v", err)
	}
	named, err := symbolize.KernelSymbols().Frames(addrs)
	if err != nil {
		s.warn("naming kernel frames: %v", err)
	}
	out := make([]report.KernelFrame, len(addrs))
	for i, a := range addrs {
		f := report.KernelFrame{Frame: i, Addr: a, Module: "vmlinux"}
		if i < len(named) {
			n := named[i]
			f.Function, f.Offset, f.Module = n.Function, n.Offset, n.Module
			f.Symbol = n.Symbol()
		} else {
			f.Symbol = symbolize.KernelFrame{Addr: a}.Symbol()
		}
		out[i] = f
	}
	s.kstacks.byID[id] = out
	return out
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
	m := &report.KernelMeta{IRQ: st.IRQ, LiveFull: st.LiveFull, NoStack: st.NoStack, RingLost: st.RingLost}
	if s.opts.Workload == "echo" {
		m.Messages = s.opts.Messages
	}
	return m
}
