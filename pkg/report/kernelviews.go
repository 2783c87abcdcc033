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
// own "[kernel] MODULE" mappings in pprof. Under the root come the user frames of the socket call that made them, where known (the
// user stack of an AF_UNIX socket call that allocated is taken as it leaves the kernel).

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
	return w.of(s.Count, s.Bytes, s.OutstandingCount, s.OutstandingBytes)
}

// kernelPart is a share of a kernel site: the calls and bytes of one user stack (nil: the
// allocations of no known user stack, with everything outstanding).
type kernelPart struct {
	user                             []StackFrame
	count, bytes, outCount, outBytes uint64
}

// kernelParts splits a site by user stack: the outstanding figures go with the part without one,
// so that every weight sums to the site's.
func kernelParts(s *KernelSite) []kernelPart {
	var parts []kernelPart
	rest := kernelPart{count: s.Count, bytes: s.Bytes, outCount: s.OutstandingCount, outBytes: s.OutstandingBytes}
	for _, u := range s.UserStacks {
		if len(u.Stack) == 0 || u.Count > rest.count {
			continue
		}
		parts = append(parts, kernelPart{user: u.Stack, count: u.Count, bytes: u.Bytes})
		rest.count -= u.Count
		rest.bytes -= min(u.Bytes, rest.bytes)
	}
	return append(parts, rest)
}

func (p *kernelPart) weight(w Weight) uint64 {
	switch w {
	case WeightCount:
		return p.count
	case WeightOutstandingBytes:
		return p.outBytes
	case WeightOutstandingCount:
		return p.outCount
	}
	return p.bytes
}

// kernelFolded is one folded line per kernel site and user stack of weight > 0: the user frames
// of the socket call, a frame naming the call, then the kernel frames.
func (r *Report) kernelFolded(o FoldedOptions) []string {
	var lines []string
	var sb strings.Builder
	for i := range r.KernelSites {
		s := &r.KernelSites[i]
		for _, part := range kernelParts(s) {
			v := part.weight(o.Weight)
			if v == 0 {
				continue
			}
			sb.Reset()
			if o.ProcessRoot {
				sb.WriteString(foldedName(processFrame(s.Comm, s.PID)) + ";")
			}
			for j := len(part.user) - 1; j >= 0; j-- {
				sb.WriteString(foldedName(frameName(&part.user[j])) + ";")
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
	}
	return lines
}

// userLocations are a user stack's Locations, one per raw frame with its inlined entries.
func userLocations(pb *pprofBuilder, st []StackFrame) []*profile.Location {
	var out []*profile.Location
	for len(st) > 0 {
		n := 1
		for n < len(st) && st[n].Frame == st[0].Frame && st[n-1].Inlined {
			n++
		}
		out = append(out, pb.location(st[:n]))
		st = st[n:]
	}
	return out
}

// addKernelSamples puts one sample per kernel site and user stack into the profile being built.
func (r *Report) addKernelSamples(pb *pprofBuilder, full bool) {
	roots := map[string]uint64{} // root frames numbered, as pseudo-addresses of their mapping
	for i := range r.KernelSites {
		s := &r.KernelSites[i]
		var kernel []*profile.Location
		for _, f := range s.Stack {
			name := f.Function
			if name == "" {
				name = f.Symbol
			}
			kernel = append(kernel, pb.location([]StackFrame{{Frame: f.Frame, Module: kernelMappingPrefix + f.Module,
				FileOffset: Hex(f.Addr), Function: name, Symbol: f.Symbol}}))
		}
		root := kernelRoot(s)
		if _, ok := roots[root]; !ok {
			roots[root] = uint64(len(roots))
		}
		kernel = append(kernel, pb.location([]StackFrame{{Module: kernelMappingPrefix + "entry", Function: root,
			FileOffset: Hex(roots[root]), Symbol: root}}))
		for _, part := range kernelParts(s) {
			if part.count == 0 && part.outCount == 0 {
				continue
			}
			smp := &profile.Sample{
				Value:    []int64{clampInt64(part.count), clampInt64(part.bytes)},
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
				smp.Value = append(smp.Value, clampInt64(part.outCount), clampInt64(part.outBytes))
			}
			smp.Location = append(append([]*profile.Location{}, kernel...), userLocations(pb, part.user)...)
			pb.p.Sample = append(pb.p.Sample, smp)
		}
	}
}
