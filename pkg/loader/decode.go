package loader

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/kstack"
)

// record is one decoded ring record. Data events decode into the value in place, without
// allocating; stacks, copies and process events (rare) own what they carry.
type record struct {
	typ    uint8
	alloc  event.Alloc
	id     uint64
	frames []kstack.Frame
	trunc  bool
	copy   *CopiedStack
	proc   *procRecord
	kmem   event.Kernel
}

type procRecord struct {
	page   PageRequest
	exec   *Exec
	p      event.Proc
	sock   *event.SocketStats
	totals []Total
	m      *Mapping
	module *ModuleRequest
}

// HashMismatches counts stack records whose frames did not hash to their id: a disagreement
// between bpf/stack.h and pkg/kstack, which would merge stacks wrongly. Always 0 unless broken.
var HashMismatches atomic.Uint64

func (r *record) reset() {
	if r.copy != nil && r.copy.buf != nil {
		copyBufs.Put(r.copy.buf)
	}
	r.frames, r.proc, r.copy = nil, nil, nil
}

// copyBufs recycles the ring-record buffers copies keep: a copy takes over the buffer its record
// was read into (no second copy of 8 KiB), and the reader gets another one from here.
var copyBufs = sync.Pool{New: func() any { return make([]byte, 0, 16<<10+1024) }}

// decodeRecord decodes rec, taking its buffer over for a copied stack.
func (r *record) decodeRecord(rec *ringbuf.Record) bool {
	if !r.decode(rec.RawSample) {
		return false
	}
	if r.typ == evCopy && r.copy != nil {
		r.copy.buf = rec.RawSample
		rec.RawSample = copyBufs.Get().([]byte)[:0]
	}
	return true
}

func (r *record) deliver(h Handler) {
	switch r.typ {
	case evAlloc, evFree, evSys:
		h.Alloc(&r.alloc)
	case evCopy:
		h.Copied(&r.alloc, r.copy)
	case evStack:
		h.Stack(r.id, r.frames, r.trunc)
	case evExec:
		h.Exec(r.proc.exec)
	case evFork, evExit, evRename:
		h.Proc(&r.proc.p, r.proc.sock, r.proc.totals)
	case evMap:
		h.Map(r.proc.m)
	case evSock:
		h.FirstSocket(r.proc.p.PID, r.proc.p.Time)
	case evKmem, evKfree, evKsys:
		if kh, ok := h.(KernelHandler); ok {
			kh.Kernel(&r.kmem)
		}
	}
}

func (r *record) early(e Early) {
	switch r.typ {
	case evPage:
		e.EarlyPage(r.proc.page)
	case evModule:
		e.EarlyModule(r.proc.module)
	case evExec:
		e.EarlyExec(r.proc.exec)
	case evMap:
		if r.proc.m.Exec { // a data file is only named, in order
			e.EarlyMap(r.proc.m)
		}
	case evCopy:
		e.EarlyCopy(r.alloc.PID, r.copy)
	}
}

// decode fills r from raw; false for a record too short to be one of ours.
func (r *record) decode(raw []byte) bool {
	if len(raw) == 0 {
		return false
	}
	r.typ = raw[0]
	switch r.typ {
	case evAlloc:
		if len(raw) < int(unsafe.Sizeof(udstraceAllocEvent{})) {
			return false
		}
		r.decodeAlloc((*udstraceAllocEvent)(unsafe.Pointer(&raw[0])))
	case evSys:
		if len(raw) < int(unsafe.Sizeof(udstraceSysEvent{})) {
			return false
		}
		r.decodeSys((*udstraceSysEvent)(unsafe.Pointer(&raw[0])))
	case evFree:
		if len(raw) < int(unsafe.Sizeof(udstraceFreeEvent{})) {
			return false
		}
		ev := (*udstraceFreeEvent)(unsafe.Pointer(&raw[0]))
		kind := event.Kind(ev.Kind)
		if !kind.IsFree() {
			kind = event.Free
		}
		r.alloc = event.Alloc{Time: ev.Ts, PID: ev.Pid, TID: ev.Tid, Kind: kind, Addr: ev.Addr,
			Caller: ev.Caller, Weighted: ev.Flags&flagWeighted != 0}
	case evCopy:
		const hdr = int(unsafe.Sizeof(udstraceCopyEvent{}))
		if len(raw) < hdr {
			return false
		}
		ev := (*udstraceCopyEvent)(unsafe.Pointer(&raw[0]))
		r.decodeSys(&ev.E)
		c := &CopiedStack{}
		r.copy = c
		c.Prefix, c.IP, c.SP, c.BP = ev.E.A.Stack, ev.Ip, ev.Sp, ev.Bp
		c.Exact, c.Short = ev.Exact != 0, ev.E.A.Flags&flagStackShort != 0
		for _, m := range ev.Maps[:min(int(ev.Nmaps), len(ev.Maps))] {
			c.Maps = append(c.Maps, MapEntry{Start: m.Start, End: m.End, Pgoff: m.Pgoff, Mod: m.Mod})
		}
		n := min(int(ev.Len), len(raw)-hdr)
		c.Bytes = raw[hdr : hdr+n : hdr+n] // decodeRecord takes the buffer over
	case evStack:
		const hdr = int(unsafe.Offsetof(udstraceStackEvent{}.Frames))
		if len(raw) < hdr {
			return false
		}
		ev := (*udstraceStackEvent)(unsafe.Pointer(&raw[0]))
		n := min(int(ev.N), (len(raw)-hdr)/8, kstack.MaxFrames)
		r.id, r.trunc = ev.Id, ev.Flags&flagStackTrunc != 0
		r.frames = make([]kstack.Frame, n)
		for i := range r.frames {
			r.frames[i] = kstack.Frame(*(*uint64)(unsafe.Pointer(&raw[hdr+8*i])))
		}
		if !chkStack(r.id, r.frames, r.trunc) {
			HashMismatches.Add(1)
		}
	case evExec, evFork, evExit, evMap, evModule, evPage, evSock, evRename:
		if len(raw) < int(unsafe.Sizeof(udstraceProcEvent{})) {
			return false
		}
		r.decodeProc((*udstraceProcEvent)(unsafe.Pointer(&raw[0])))
	case evKmem, evKfree:
		return r.decodeKmem(raw)
	case evKsys:
		return r.decodeKsys(raw)
	default:
		return false
	}
	return true
}

func (r *record) decodeAlloc(ev *udstraceAllocEvent) {
	r.alloc = event.Alloc{
		Time: ev.Ts, PID: ev.Pid, TID: ev.Tid, Kind: event.Kind(ev.Kind), Size: ev.Size, Addr: ev.Addr,
		OldAddr: ev.OldAddr, Failed: ev.Flags&flagFailed != 0, Inside: event.Kind(ev.Inside), FD: -1,
		StackID: ev.Stack, Truncated: ev.Flags&flagStackTrunc != 0, RawFrames: ev.Flags&flagStackRaw != 0,
		Weighted: ev.Flags&flagWeighted != 0, Untracked: ev.Flags&flagUntracked != 0,
		Sampled: ev.Flags&flagSampled != 0,
	}
}

func (r *record) decodeSys(ev *udstraceSysEvent) {
	r.decodeAlloc(&ev.A)
	a := &r.alloc
	a.OldSize, a.Flags, a.FD = ev.OldSize, ev.Aux, int32(ev.Fd)
	if a.Kind == event.Brk && int64(a.Size) < 0 {
		a.Shrink = true
		a.Size = -a.Size
	}
}

func (r *record) decodeProc(ev *udstraceProcEvent) {
	pr := &procRecord{p: event.Proc{Time: ev.Ts, PID: ev.Pid, PPID: ev.Ppid, Comm: cString(ev.Comm[:])}}
	r.proc = pr
	switch ev.Type {
	case evExec:
		pr.p.Kind, pr.p.Exe = event.ProcExec, cString(ev.Name[:])
		pr.exec = &Exec{Proc: pr.p, StartCode: ev.Addr, InterpBase: ev.Len, Dev: ev.Dev, Ino: ev.Ino}
	case evFork:
		pr.p.Kind, pr.p.SharedVM = event.ProcFork, ev.Flags&pfSharedVM != 0
	case evRename:
		pr.p.Kind, pr.p.TID = event.ProcRename, uint32(ev.Addr)
	case evExit:
		pr.p.Kind, pr.p.ExitCode = event.ProcExit, int(ev.ExitCode)
		pr.sock, pr.totals = sockStats(ev.Pid, &ev.Sock), exitTotals(ev.Pid, ev.Totals[:])
	case evMap:
		pr.m = &Mapping{PID: ev.Pid, Addr: ev.Addr, Len: ev.Len, Pgoff: ev.Pgoff, Dev: ev.Dev, Ino: ev.Ino, Name: fileName(ev),
			Time: ev.Ts, Exec: ev.Flags&pfExec != 0}
	case evPage:
		pr.page = PageRequest{Time: ev.Ts, PID: ev.Pid, Mod: ev.Mod, Page: uint32(ev.Pgoff)}
	case evModule:
		pr.module = &ModuleRequest{Mapping: Mapping{PID: ev.Pid, Addr: ev.Addr, Len: ev.Len, Pgoff: ev.Pgoff, Dev: ev.Dev,
			Ino: ev.Ino, Name: fileName(ev)}, Mod: ev.Mod, Comm: pr.p.Comm}
	}
}

const (
	pfPath     = 1 // bpf/udstrace.h PF_PATH
	pfSharedVM = 2 // PF_SHARED_VM
	pfExec     = 4 // PF_EXEC
)

// fileName is a mapping event's file: its absolute path when the kernel could build it (its
// components from the file up, each NUL-ended, an empty one at the root), else its last name.
func fileName(ev *udstraceProcEvent) string {
	if ev.Flags&pfPath == 0 {
		return cString(ev.Name[:])
	}
	return joinPath(ev.Name[:])
}

// joinPath reads file_path's layout; "" when it is not well formed.
func joinPath(raw []int8) string {
	var parts []string
	start := 0
	for i, c := range raw {
		if c != 0 {
			continue
		}
		if i == start { // the empty component: the root
			slices.Reverse(parts)
			return "/" + strings.Join(parts, "/")
		}
		parts = append(parts, cString(raw[start:i]))
		start = i + 1
	}
	return ""
}

// exitTotals turns an exit event's per-kind totals into Totals; nil without sampling.
func exitTotals(pid uint32, raw []udstraceCountVal) []Total {
	var out []Total
	for k, v := range raw {
		if v.Count != 0 {
			out = append(out, Total{PID: pid, Kind: event.Kind(k), Calls: v.Count, Bytes: v.Bytes})
		}
	}
	return out
}

func sockStats(pid uint32, s *udstraceSockStats) *event.SocketStats {
	out := &event.SocketStats{PID: pid, FirstTime: s.FirstNs}
	copy(out.Counts[:], s.Counts[:])
	return out
}

func cString(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	out := make([]byte, n)
	for i := range out {
		out[i] = byte(b[i])
	}
	return string(out)
}
