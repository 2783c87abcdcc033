package report

import (
	"cmp"
	"fmt"
	"path"
	"slices"
	"strconv"

	"github.com/udstrace/udstrace/pkg/event"
)

// Finish symbolizes the stacks and builds the report; sym may be nil. The Builder is left unchanged.
func (b *Builder) Finish(sym Symbolizer, meta Meta) *Report { return b.finish(sym, meta, false) }

// Snapshot is Finish for live views (ndjson intervals, top), which show a few sites' stacks out of
// thousands: the sites' stacks are left empty, to be symbolized on demand by Report.SiteStack once
// the caller has let the Builder go, so that the event reader never waits on symbolization.
// Unmatched frees carry no caller.
func (b *Builder) Snapshot(sym Symbolizer, meta Meta) *Report { return b.finish(sym, meta, true) }

func (b *Builder) finish(sym Symbolizer, meta Meta, lazy bool) *Report {
	r := &Report{
		Schema:             Schema,
		Command:            nonNil(meta.Command),
		CommandStatus:      meta.CommandStatus,
		Mode:               meta.Mode,
		SampleBytes:        meta.SampleBytes,
		StackMode:          meta.StackMode,
		Start:              meta.Start,
		End:                meta.End,
		LostEvents:         meta.Lost.RingBuffer + meta.Lost.Other,
		LostDetail:         LostDetail(meta.Lost),
		Stacks:             meta.Stacks,
		Tracer:             meta.Tracer,
		Warnings:           append(lossWarnings(meta), meta.Warnings...),
		Unreliable:         []string{},
		Processes:          []Process{},
		Sites:              []Site{},
		UnmatchedFreeSites: []FreeSite{},
		topSites:           b.opts.TopSites,
	}
	if r.LostEvents > 0 {
		r.Unreliable = []string{"outstanding", "unmatched_frees"}
	}
	if !meta.Start.IsZero() && meta.End.After(meta.Start) {
		r.DurationSeconds = meta.End.Sub(meta.Start).Seconds()
	}

	procs := make([]*proc, 0, len(b.procs))
	seen := make(map[uint32]bool, len(b.procs))
	for _, p := range b.procs {
		if !p.gone {
			procs = append(procs, p)
			seen[p.pid] = true
		}
	}
	for pid := range meta.Roles {
		if !seen[pid] && meta.Roles[pid] != "" {
			procs = append(procs, &proc{idx: b.nextIdx + len(procs), pid: pid}) // a workload process we saw nothing of
		}
	}
	slices.SortFunc(procs, func(a, b *proc) int { return cmp.Or(cmp.Compare(a.pid, b.pid), cmp.Compare(a.idx, b.idx)) })
	r.FileMappings = []FileMapping{}
	for _, p := range procs {
		rp := p.report(meta.Roles[p.pid])
		if a, ok := meta.Allocators[p.pid]; ok && p.group == 0 {
			rp.Allocator = &a
		}
		r.Processes = append(r.Processes, rp)
		r.FileMappings = append(r.FileMappings, p.fileMappings()...)
	}
	slices.SortStableFunc(r.FileMappings, func(a, b FileMapping) int { return cmp.Compare(b.Bytes, a.Bytes) })

	now := cmp.Or(meta.Now, b.latest)
	r.AgeReference, r.MinAgeSeconds = now, max(b.opts.MinAge, 0).Seconds()
	ages := b.ages(now)
	sc := &symCache{sym: sym, m: make(map[frameID][]SymFrame)}
	stacks := make(map[*site][]StackFrame, len(b.order))
	if lazy {
		r.lazy = &lazyStacks{sc: sc, frames: b.frames, ids: make(map[int]uint64, len(b.order))}
	}
	plan := b.planFold(b.opts.MaxSites)
	for _, s := range b.order {
		if s.gone {
			continue
		}
		if plan.cold(s) {
			continue // in a folded entry: its stack is never expanded
		}
		var st []StackFrame
		if lazy {
			r.lazy.ids[s.id] = s.stack
		} else {
			st = sc.expand(b.frames(s.stack))
			stacks[s] = st
		}
		if s.kind == event.Free {
			r.UnmatchedFreeSites = append(r.UnmatchedFreeSites, FreeSite{PID: s.p.pid, Comm: s.p.comm, Count: s.count, Caller: st})
			continue
		}
		out := Site{
			ID: s.id, PID: s.p.pid, Comm: s.p.comm, Kind: s.kind.String(),
			Count: s.count, Failed: s.failed, Bytes: s.bytes,
			OutstandingCount: s.outCount, OutstandingBytes: s.outBytes,
			Stack: st, FileBacked: s.file,
		}
		out.TID, out.Thread, out.Threads = s.threadFields()
		if a := ages[s.pos]; a.any {
			out.OldestOutstandingAgeSeconds = float64(age(now, a.oldest)) / 1e9
			out.OutstandingOlderThanMinAge = a.older
		}
		r.Sites = append(r.Sites, out)
	}
	r.Timeline, r.Peak = []Timeline{}, []Peak{}
	if !lazy { // live views draw no timeline
		r.Timeline, r.Peak = b.timelines(procs, plan, b.lastID)
	}
	if plan != nil {
		r.Sites = append(r.Sites, plan.folded(b.lastID, ages, now)...)
		r.Warnings = append(r.Warnings, plan.warning(b.opts.MaxSites))
	}
	slices.SortFunc(r.UnmatchedFreeSites, func(a, b FreeSite) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.PID, b.PID))
	})
	slices.SortFunc(r.Sites, func(a, b Site) int {
		return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(b.Count, a.Count), cmp.Compare(a.ID, b.ID))
	})

	stackOf := func(s *site) []StackFrame { // a folded site's stack, only if the verdict needs it
		st, ok := stacks[s]
		if !ok {
			st = sc.expand(b.frames(s.stack))
			stacks[s] = st
		}
		return st
	}
	r.SocketPath = b.verdict(procs, meta.Roles, stackOf, r.LostEvents)
	b.kernelReport(r, meta, func(id uint64) []StackFrame { return sc.expand(b.frames(id)) })
	b.kernelVerdict(r, meta)
	for _, sp := range r.SocketPath.Processes {
		if sp.AfterIsUpperBound {
			r.Warnings = append(r.Warnings, fmt.Sprintf("pid %d: allocations after its first socket call are an upper bound (more than %d allocations before the counters arrived)", sp.PID, b.opts.MaxTimeline))
		}
	}
	if meta.SampleBytes > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("sampled: stacks were taken about once every %d bytes allocated; per-process calls, bytes and frees are exact, per-site figures and outstanding blocks are estimates", meta.SampleBytes))
	}
	if b.folded > 0 {
		entries := fmt.Sprintf("%d entries", len(b.groups))
		if len(b.groups) == 1 {
			entries = "1 entry"
		}
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s started after the first %d were folded into %s by command and executable (pid 0, folded_processes): their call sites are merged by stack", plural(uint64(b.folded), "exited process"), b.opts.MaxProcs, entries))
	}
	if sym == nil && len(b.order) > 0 {
		r.Warnings = append(r.Warnings, "stacks were not symbolized")
	}
	if r.NotTraced() {
		r.markNotTraced()
	}
	return r
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (p *proc) report(role Role) Process {
	out := Process{
		PID: p.pid, PPID: p.ppid, Comm: p.comm, Exe: p.exe, Role: role, Exited: p.exited,
		Allocations: p.allocs, AllocatedBytes: p.allocBytes,
		HeapByKind: map[string]CallCount{}, Frees: p.frees, FreeNullCalls: p.nullFrees, UnmatchedFrees: p.unmatched,
		OutstandingCount: p.outCount, OutstandingBytes: p.outBytes,
		MmapCalls: p.mmapCalls, MmapBytes: p.mmapBytes,
		MappedFileCalls: p.fileCalls, MappedFileBytes: p.fileBytes, MappedFileOutstandingBytes: p.fileOut, MremapCalls: p.mremap, MremapBytes: p.mremapB,
		MunmapCalls: p.munmap, BrkCalls: p.brkCalls, BrkBytes: p.brkBytes,
		InsideAllocator:      map[string]KernelReqs{},
		SocketSyscalls:       p.sock.Total(),
		SocketSyscallsByName: socketNames(p.sock),
		FoldedProcesses:      p.group,
	}
	if p.exited && p.group == 0 {
		if sig := p.exitCode & 0x7f; sig != 0 {
			out.ExitSignal = sig // killed: no exit code
		} else {
			code := (p.exitCode >> 8) & 0xff
			out.ExitCode = &code
		}
	}
	for k := event.Malloc; int(k) < kindSlots; k++ {
		c := p.heap[k]
		if c.Calls == 0 || !k.IsHeap() {
			continue
		}
		out.HeapByKind[k.String()] = c
		if !k.IsFree() {
			out.HeapCalls += c.Calls
			out.HeapBytes += c.Bytes
		}
	}
	for k, in := range p.inside {
		if in.Count != 0 {
			out.InsideAllocator[event.Kind(k).String()] = in
		}
	}
	if p.sock.FirstTime != 0 {
		t := p.sock.FirstTime
		out.FirstSocketTime = &t
	}
	return out
}

func socketNames(s event.SocketStats) map[string]uint64 {
	m := map[string]uint64{}
	for i, n := range s.Counts {
		if n != 0 {
			m[event.SocketCall(i).String()] = n
		}
	}
	return m
}

// frameID is a frame's identity for the symbol cache: a return address is looked up one
// byte back, so it is not the same frame as a pc at the same offset (a function's first
// instruction is also the address after the jump ending the function before it).
type frameID struct {
	mod string
	off uint64
	ret bool
}

// symCache calls the Symbolizer once per distinct frame, and once per distinct pair of
// adjacent frames for the frames tail calls left out.
type symCache struct {
	sym   Symbolizer
	m     map[frameID][]SymFrame
	tails map[[2]frameID][]event.Frame
}

func idOf(f *event.Frame) frameID {
	if f.Module != "" {
		return frameID{frameModKey(f), f.FileOffset, f.Return}
	}
	return frameID{"", f.Addr, f.Return}
}

func (c *symCache) lookup(f *event.Frame) []SymFrame {
	if c.sym == nil {
		return nil
	}
	id := idOf(f)
	sf, ok := c.m[id]
	if !ok {
		sf = c.sym.Symbolize(*f)
		c.m[id] = sf
	}
	return sf
}

// tailCalls returns the frames tail calls left out between callee and its caller.
func (c *symCache) tailCalls(callee, caller *event.Frame) []event.Frame {
	tc, ok := c.sym.(TailCaller)
	if !ok || callee.Module == "" || caller.Module == "" {
		return nil
	}
	if c.tails == nil {
		c.tails = map[[2]frameID][]event.Frame{}
	}
	k := [2]frameID{idOf(callee), idOf(caller)}
	fs, ok := c.tails[k]
	if !ok {
		fs = tc.TailCalls(*callee, *caller)
		c.tails[k] = fs
	}
	return fs
}

// expand turns raw frames into source frames, inlined ones first. This is the one place a
// stack gets its names: the frames of functions that left by a tail call are put back here,
// under the raw frame above them (whose index they take).
func (c *symCache) expand(stack []event.Frame) []StackFrame {
	out := make([]StackFrame, 0, len(stack))
	for i := range stack {
		if i > 0 {
			tails := c.tailCalls(&stack[i-1], &stack[i])
			for j := range tails {
				out = c.appendFrame(out, &tails[j], i, true)
			}
		}
		out = c.appendFrame(out, &stack[i], i, false)
	}
	return out
}

// appendFrame appends the source frames of f as raw frame i.
func (c *symCache) appendFrame(out []StackFrame, f *event.Frame, i int, tail bool) []StackFrame {
	base := StackFrame{Frame: i, Addr: Hex(f.Addr), Module: f.Module, BuildID: f.BuildID, FileOffset: Hex(f.FileOffset), TailCall: tail}
	sfs := c.lookup(f)
	if len(sfs) == 0 {
		base.Symbol = symbolText(f, nil)
		return append(out, base)
	}
	if tail {
		// Like gdb, a frame put back is one frame, named by the innermost function at its
		// address: a function inlined where the jump is stands for the function around it.
		sfs = sfs[:1]
	}
	for j := range sfs {
		sf := &sfs[j]
		x := base
		x.Symbol = symbolText(f, sf)
		x.Function, x.Offset, x.File, x.Line, x.Inlined = sf.Function, sf.Offset, sf.File, sf.Line, sf.Inlined && !tail
		out = append(out, x)
	}
	return out
}

// symbolText is module!function+0xoff, module+0xFILEOFF when the function is unknown, or 0xADDR.
func symbolText(f *event.Frame, sf *SymFrame) string {
	mod := ""
	if f.Module != "" {
		mod = path.Base(f.Module)
	}
	if sf != nil && sf.Function != "" {
		s := sf.Function
		if mod != "" {
			s = mod + "!" + s
		}
		if !sf.Inlined {
			s += "+0x" + strconv.FormatUint(sf.Offset, 16)
		}
		return s
	}
	if mod != "" {
		return mod + "+0x" + strconv.FormatUint(f.FileOffset, 16)
	}
	return "0x" + strconv.FormatUint(f.Addr, 16)
}
