package report

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/google/pprof/profile"
)

// The kernel sites in the flame-graph views: folded lines and pprof samples of their own, each
// rooted at a frame naming how the task entered the kernel (the call, the fault), with the
// kernel frames above it marked: "_[k]" in folded (flamegraph.pl colours those as kernel), their
// own "[kernel] MODULE" mappings in pprof. The user frames of the syscall are not joined below
// them (the kmem events carry no user stack).

// kernelMappingPrefix starts the pprof mapping name of kernel frames.
const kernelMappingPrefix = "[kernel] "

// kernelRoot names what the task was doing when the kernel allocated.
func kernelRoot(s *KernelSite) string {
	switch {
	case s.SocketCall != "":
		return "[kernel: " + s.SocketCall + " on AF_UNIX]"
	case s.Syscall >= 0:
		return fmt.Sprintf("[kernel: syscall %d]", s.Syscall)
	}
	return "[kernel: " + s.Entry + "]"
}

func (s *KernelSite) weight(w Weight) uint64 {
	switch w {
	case WeightCount:
		return s.Count
	case WeightOutstandingBytes:
		return s.OutstandingBytes
	case WeightOutstandingCount:
		return s.OutstandingCount
	}
	return s.Bytes
}

// kernelFolded is one folded line per kernel site of weight > 0.
func (r *Report) kernelFolded(o FoldedOptions) []string {
	var lines []string
	var sb strings.Builder
	for i := range r.KernelSites {
		s := &r.KernelSites[i]
		v := s.weight(o.Weight)
		if v == 0 {
			continue
		}
		sb.Reset()
		if o.ProcessRoot {
			sb.WriteString(foldedName(processFrame(s.Comm, s.PID)) + ";")
		}
		sb.WriteString(foldedName(kernelRoot(s)))
		for j := len(s.Stack) - 1; j >= 0; j-- {
			name := s.Stack[j].Function
			if name == "" {
				name = s.Stack[j].Symbol
			}
			sb.WriteString(";" + foldedName(name) + "_[k]")
		}
		sb.WriteString(" " + strconv.FormatUint(v, 10))
		lines = append(lines, sb.String())
	}
	return lines
}

// addKernelSamples puts one sample per kernel site into the profile being built.
func (r *Report) addKernelSamples(pb *pprofBuilder, full bool) {
	roots := map[string]uint64{} // root frames numbered, as pseudo-addresses of their mapping
	for i := range r.KernelSites {
		s := &r.KernelSites[i]
		smp := &profile.Sample{
			Value:    []int64{clampInt64(s.Count), clampInt64(s.Bytes)},
			Label:    map[string][]string{"comm": {s.Comm}, "kind": {"kernel " + s.Kind}, "kernel": {"true"}},
			NumLabel: map[string][]int64{"pid": {int64(s.PID)}, "kernel_site": {int64(s.ID)}},
		}
		if s.Cache != "" {
			smp.Label["cache"] = []string{s.Cache}
		}
		if s.SocketCall != "" {
			smp.Label["socket_call"] = []string{s.SocketCall}
		}
		if full {
			smp.Value = append(smp.Value, clampInt64(s.OutstandingCount), clampInt64(s.OutstandingBytes))
		}
		for _, f := range s.Stack {
			name := f.Function
			if name == "" {
				name = f.Symbol
			}
			smp.Location = append(smp.Location, pb.location([]StackFrame{{Frame: f.Frame, Module: kernelMappingPrefix + f.Module,
				FileOffset: Hex(f.Addr), Function: name, Symbol: f.Symbol}}))
		}
		root := kernelRoot(s)
		if _, ok := roots[root]; !ok {
			roots[root] = uint64(len(roots))
		}
		smp.Location = append(smp.Location, pb.location([]StackFrame{{Module: kernelMappingPrefix + "entry", Function: root,
			FileOffset: Hex(roots[root]), Symbol: root}}))
		pb.p.Sample = append(pb.p.Sample, smp)
	}
}
