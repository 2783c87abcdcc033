package session

import (
	"fmt"

	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/kstack"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
)

// handler turns loader events into report input. Its loader.Handler methods run on the handling
// goroutine, in ring order; its loader.Early methods on the draining one.
type handler struct {
	s          *Session
	named      map[uint32]bool // processes whose comm the builder has
	lastPID    uint32
	seenCopies map[copyKey]bool // drain goroutine: copies sent ahead to the unwinder

	allocs   map[string]string // module key -> the allocator it exports ("" none)
	exeKeys  map[uint32]string // pid -> its executable's key, for processes seen exec
	untraced map[string]bool   // executables already warned of: their processes map no malloc
}

type copyKey struct{ prefix, ip uint64 }

func newHandler(s *Session) *handler {
	return &handler{s: s, named: map[uint32]bool{}, seenCopies: map[copyKey]bool{}, allocs: map[string]string{}, exeKeys: map[uint32]string{}, untraced: map[string]bool{}}
}

func (h *handler) Alloc(a *event.Alloc) {
	h.name(a)
	if a.RawFrames && a.StackID != 0 {
		h.nameRaw(a)
	}
	if a.Sampled {
		h.s.bmu.Lock()
		h.s.addSample(a)
		h.s.bmu.Unlock()
		return
	}
	if a.Weighted && !a.Kind.IsFree() {
		a.Weight = h.s.callWeight(a.Size)
	}
	if min := h.s.opts.MinSize; min > 0 && !a.Kind.IsFree() && a.Kind != event.Munmap && a.Size < min {
		return // frees of what was left out count as unmatched, which the report explains
	}
	h.s.bmu.Lock()
	h.s.builder.Alloc(a)
	h.s.bmu.Unlock()
}

// Copied finishes a stack the kernel could not, then handles the event as any other.
func (h *handler) Copied(a *event.Alloc, c *loader.CopiedStack) {
	var frames []kstack.Frame
	if c.Prefix != 0 {
		prefix, _ := h.s.stacks.get(c.Prefix)
		if a.RawFrames {
			prefix, _ = h.s.maps.ResolveRaw(a.PID, prefix)
		}
		frames = append(frames, prefix...)
	}
	var rest []kstack.Frame
	if u, ok := c.Ticket.(*unwound); ok {
		<-u.done
		rest = u.frames
	} else {
		rest = h.s.unwindCopy(a.PID, c)
	}
	a.RawFrames = false // named here
	frames = append(frames, rest[:min(len(rest), max(kstack.MaxFrames-len(frames), 0))]...)
	a.StackID = h.s.stacks.intern(frames, false)
	if a.Sampled && h.s.opts.SampleBytes == 0 { // count mode: a call counted on its own
		h.name(a)
		h.s.bmu.Lock()
		h.s.builder.Counted(a.PID, "", a.Kind, a.StackID, 1, a.Size)
		h.s.bmu.Unlock()
		return
	}
	h.Alloc(a)
}

// nameRaw gives an event whose stack has frames the kernel could not name (the mmap lock was
// held) the stack with them named from the process's mappings.
func (h *handler) nameRaw(a *event.Alloc) {
	frames, ok := h.s.stacks.get(a.StackID)
	if !ok {
		return
	}
	if named, changed := h.s.maps.ResolveRaw(a.PID, frames); changed {
		a.StackID = h.s.stacks.internFlags(named, a.Truncated)
	}
}

// name gives the builder a process's comm the first time it is seen without exec or fork
// (attach, system-wide): data events carry none.
func (h *handler) name(a *event.Alloc) {
	if a.PID == h.lastPID {
		return
	}
	h.lastPID = a.PID
	if h.named[a.PID] {
		return
	}
	h.named[a.PID] = true
	h.s.bmu.Lock()
	a.Comm = h.s.describe(a.PID)
	h.s.bmu.Unlock()
}

// describe tells the builder what a live process the trace did not see exec or fork is called,
// runs, and what its threads are called, and returns its name; the caller holds bmu.
func (s *Session) describe(pid uint32) string {
	comm, exe := procName(pid)
	s.builder.Named(pid, comm, exe)
	s.cgroups.Note(pid)
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, _ := os.ReadDir(dir)
	for _, d := range tasks {
		tid, err := strconv.ParseUint(d.Name(), 10, 32)
		if err != nil || uint32(tid) == pid {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, d.Name(), "comm")); err == nil {
			if name := strings.TrimSuffix(string(b), "\n"); name != comm {
				s.builder.Proc(&event.Proc{Kind: event.ProcRename, PID: pid, TID: uint32(tid), Comm: name})
			}
		}
	}
	return comm
}

// procName reads a live process's command name and executable ("" for what cannot be read).
func procName(pid uint32) (comm, exe string) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		comm = strings.TrimSuffix(string(b), "\n")
	}
	exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return comm, exe
}

func (h *handler) Stack(id uint64, frames []kstack.Frame, truncated bool) {
	h.s.stacks.put(id, frames, truncated)
}

func (h *handler) Exec(e *loader.Exec) {
	h.named[e.PID] = true
	h.s.maps.Exec(e.PID, e.Exe, e.StartCode, e.InterpBase, procmaps.KernelDevKey(e.Dev, e.Ino))
	h.s.bmu.Lock()
	h.forgetPicked(e.PID)
	h.s.cgroups.Note(e.PID) // under bmu: a snapshot's pruning cannot fall between this and the builder's knowing the pid
	h.s.builder.Proc(&e.Proc)
	h.s.bmu.Unlock()
	h.exeKeys[e.PID] = procmaps.KernelDevKey(e.Dev, e.Ino)
	h.noteExec(e.PID, h.exeKeys[e.PID])
}

func (h *handler) Proc(p *event.Proc, sock *event.SocketStats, totals []loader.Total) {
	switch p.Kind {
	case event.ProcFork:
		h.named[p.PID] = true
		h.s.maps.Fork(p.PPID, p.PID)
		h.noteFork(p.PPID, p.PID)
	case event.ProcExit:
		delete(h.named, p.PID)
		h.lastPID = 0
		h.noteExit(p.PID, h.exeKeys[p.PID])
		delete(h.exeKeys, p.PID)
		h.s.maps.Exit(p.PID)
	}
	h.s.bmu.Lock()
	defer h.s.bmu.Unlock()
	if p.Kind == event.ProcFork {
		h.s.cgroups.Inherit(p.PID, p.PPID) // a fork starts in its parent's cgroup
	}
	if sock != nil {
		h.s.builder.Sockets(*sock)
	}
	for _, t := range totals { // before the exit: they belong to this incarnation
		h.s.builder.Totals(t.PID, t.Kind, t.Calls, t.Bytes)
	}
	if p.Kind == event.ProcExit {
		h.forgetPicked(p.PID)
	}
	h.s.builder.Proc(p)
}

func (h *handler) FirstSocket(pid uint32, t uint64) {
	h.s.bmu.Lock()
	defer h.s.bmu.Unlock()
	h.s.builder.Sockets(event.SocketStats{PID: pid, FirstTime: t})
}

func (h *handler) Map(m *loader.Mapping) {
	h.s.bmu.Lock()
	h.s.builder.MapFile(m.PID, m.Addr, m.Name) // named in the report's file mappings
	h.s.bmu.Unlock()
	if !m.Exec {
		return // a data file: only named
	}
	h.s.maps.Map(m.PID, m.Addr, m.Len, m.Pgoff, m.Dev, m.Ino, m.Name)
	if mod := h.s.maps.Module(procmaps.KernelDevKey(m.Dev, m.Ino)); mod != nil {
		h.noteMapped(m.PID, mod)
	}
}

// EarlyModule opens a module the kernel met in a stack, while its process is (most likely) still
// there to open it through, and queues its table.
func (h *handler) EarlyModule(r *loader.ModuleRequest) {
	m := h.s.maps.Open(r.PID, r.Addr, r.Len, r.Dev, r.Ino, r.Name)
	if m == nil {
		m = h.s.maps.Stub(r.Mod, procmaps.KernelDevKey(r.Dev, r.Ino), r.Name)
	} else if m.ID == 0 {
		h.s.maps.SetID(m, r.Mod)
	}
	h.s.tables.ensureReady(m) // here, not queued: its stacks wait for it
	h.s.tables.wantWhole(m, false)
}

// EarlyPage queues a page of unwind rows the kernel asked for, ahead of everything else queued.
func (h *handler) EarlyPage(p loader.PageRequest) {
	h.s.tables.Page(p)
}

// EarlyCopy hands a copied stack to the unwinder goroutine at once: unwinding it compiles and
// loads the pages of rows the whole stack passes through, so the next events through the same
// code are unwound in the kernel, instead of the kernel finding one missing page per event.
func (h *handler) EarlyCopy(pid uint32, c *loader.CopiedStack) {
	// Copies that stopped at a frame already seen stopping (same frames before it, same pc) most
	// likely continue the same way: the unwinder has nothing new to learn from them, and the
	// handler unwinds them in turn. Only novel ones go ahead.
	k := copyKey{c.Prefix, c.IP}
	if h.seenCopies[k] {
		return
	}
	if len(h.seenCopies) > 1<<16 {
		clear(h.seenCopies)
	}
	h.seenCopies[k] = true
	u := &unwound{done: make(chan struct{})}
	select {
	case h.s.unwinds <- unwindJob{pid: pid, c: c, u: u}:
		c.Ticket = u
	default: // the unwinder is behind: the handler unwinds this one itself
	}
}

// unwound is a copied stack's frames, once the unwinder goroutine is done with it.
type unwound struct {
	done   chan struct{}
	frames []kstack.Frame
}

type unwindJob struct {
	pid uint32
	c   *loader.CopiedStack
	u   *unwound
}

// unwindCopies finishes copied stacks in drain order, ahead of the handler.
func (s *Session) unwindCopies() {
	for j := range s.unwinds {
		j.u.frames = s.unwindCopy(j.pid, j.c)
		close(j.u.done)
	}
}

// unwindCopy unwinds a copy in user space; the prefix is not included.
func (s *Session) unwindCopy(pid uint32, c *loader.CopiedStack) []kstack.Frame {
	cp := procmaps.Copied{IP: c.IP, SP: c.SP, BP: c.BP, Exact: c.Exact, Bytes: c.Bytes}
	for _, m := range c.Maps {
		cp.Maps = append(cp.Maps, procmaps.Placed{Start: m.Start, End: m.End, Pgoff: m.Pgoff, Mod: m.Mod})
	}
	return s.maps.Unwind(pid, &cp, kstack.MaxFrames)
}

// EarlyMap opens a file mapped executable (dlopen) at once, while it is there to open, makes it
// ready and loads it in the background; the pages its first stacks need are asked for.
func (h *handler) EarlyMap(m *loader.Mapping) {
	if mod := h.s.maps.Open(m.PID, m.Addr, m.Len, m.Dev, m.Ino, m.Name); mod != nil {
		h.s.tables.wantWhole(mod, false)
	}
}

// EarlyExec notes the new image's executable (a library found beside it may be mapped before
// the exec is handled) and starts loading its tables at once: its first allocations follow
// within milliseconds.
func (h *handler) EarlyExec(e *loader.Exec) {
	exe := e.Exe
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", e.PID)); err == nil && isHostRoot(procRoot(e.PID)) {
		exe = strings.TrimSuffix(l, " (deleted)")
	}
	h.s.maps.NoteExec(e.PID, exe)
	h.s.tables.push(tableJob{exec: e}, true)
}

// forgetPicked clears the kernel's table of picked blocks of a process whose image is gone
// (full mode with sampling); the caller holds bmu.
func (h *handler) forgetPicked(pid uint32) {
	if h.s.opts.SampleBytes == 0 || h.s.opts.Mode == "count" {
		return
	}
	_ = h.s.tracer.ForgetSampled(h.s.builder.LiveAddrs(pid))
}

func procRoot(pid uint32) string { return fmt.Sprintf("/proc/%d/root", pid) }

// symbolizer serves the report's symbol lookups from the modules kept open during the trace.
// The final report waits for debug files asked of debuginfod servers (final); a snapshot taken
// while the trace runs does not, since the events wait for it.
type symbolizer struct {
	maps  *procmaps.Table
	final bool
}

// TailCalls puts back the frames of functions that left by a tail call between callee and its
// caller (report.TailCaller), from the DWARF call sites of the two modules.
func (y *symbolizer) TailCalls(callee, caller event.Frame) []event.Frame {
	if !caller.Return || caller.FileOffset == 0 {
		return nil
	}
	mc, me := y.maps.Module(caller.ModuleKey), y.maps.Module(callee.ModuleKey)
	off := callee.FileOffset
	if callee.Return && off > 0 {
		off-- // inside the call, in the function that made it
	}
	var out []event.Frame
	for _, tf := range y.maps.TailCalls(mc, caller.FileOffset, me, off) {
		f := caller
		if tf.Mod != mc {
			f = callee
		}
		out = append(out, event.Frame{Module: f.Module, BuildID: f.BuildID, ModuleKey: f.ModuleKey, FileOffset: tf.Off, Return: true})
	}
	return out
}

func (y *symbolizer) Symbolize(f event.Frame) []report.SymFrame {
	m := y.maps.Module(f.ModuleKey)
	if m == nil {
		return nil
	}
	if y.final {
		m.FetchDebug()
	}
	off := f.FileOffset
	if f.Return && off > 0 {
		off-- // the call instruction, not the one after it
	}
	var out []report.SymFrame
	for _, sf := range m.Symbolize(off) {
		if f.Return && !sf.Inlined && sf.Function != "" {
			sf.Offset++ // show the return address, as gdb does
		}
		out = append(out, report.SymFrame{Function: sf.Function, Offset: sf.Offset, File: sf.File, Line: sf.Line, Inlined: sf.Inlined})
	}
	return out
}
