package loader

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/udstrace/udstrace/pkg/event"
)

const (
	evAlloc = 1 + iota
	evExec
	evFork
	evExit
	evMap
)

const (
	flagFailed     = 1
	flagStackFP    = 2
	flagStackCopy  = 4
	flagStackShort = 8
	flagSampled    = 16
	flagWeighted   = 32
	flagUntracked  = 64
)

// RawStack is a user stack as captured in the kernel, before unwinding.
type RawStack struct {
	IP, SP, BP uint64
	PCs        []uint64 // frame-pointer mode: the kernel's walk, innermost first
	Copy       []byte   // copy mode: stack bytes from SP upward
	Short      bool     // the copy was shortened to stay inside the stack
}

// Exec is a process's new image and where the kernel loaded it.
type Exec struct {
	event.Proc
	StartCode  uint64 // start of the executable's text, for its load bias
	InterpBase uint64 // where the dynamic loader was loaded (AT_BASE)
	Dev        uint32 // kernel device encoding
	Ino        uint64
}

// Mapping is an executable file mapping a traced process made with mmap.
type Mapping struct {
	PID              uint32
	Addr, Len, Pgoff uint64
	Dev              uint32
	Ino              uint64
	Name             string // last path component
}

// Handler receives events in ring-buffer order; it runs on the reading goroutine.
type Handler interface {
	Alloc(a *event.Alloc, stack *RawStack)
	Exec(e *Exec)
	// Proc: sock and totals (exact calls with sampling) come with exits only.
	Proc(p *event.Proc, sock *event.SocketStats, totals []Total)
	Map(m *Mapping)
}

// DrainEvery bounds how long an event waits in the ring buffer for a batch to fill.
const DrainEvery = 100 * time.Millisecond

// Read delivers events until ctx is done, then delivers what is left in the ring buffer and returns.
func (t *Tracer) Read(ctx context.Context, h Handler) error {
	rd, err := ringbuf.NewReader(t.objs.Events)
	if err != nil {
		return fmt.Errorf("opening ring buffer: %w", err)
	}
	defer rd.Close()
	// Flush wakes a blocked read without the reader's lock (SetDeadline would wait for it).
	stop := context.AfterFunc(ctx, func() { _ = rd.Flush() })
	defer stop()
	go func() { // the kernel wakes the reader only per batch: drain the rest regularly
		tick := time.NewTicker(DrainEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = rd.Flush()
			}
		}
	}()
	var rec ringbuf.Record
	final := false
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			decode(rec.RawSample, h)
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				if !final { // this may be a periodic flush from before the end: drain once more
					final = true
					_ = rd.Flush()
					continue
				}
				return nil // everything written before the end has been delivered
			}
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("reading ring buffer: %w", err)
		}
	}
}

func decode(raw []byte, h Handler) {
	if len(raw) == 0 {
		return
	}
	switch raw[0] {
	case evAlloc:
		decodeAlloc(raw, h)
	case evExec, evFork, evExit, evMap:
		decodeProc(raw, h)
	}
}

func decodeAlloc(raw []byte, h Handler) {
	const hdr = int(unsafe.Sizeof(udstraceAllocEvent{}))
	if len(raw) < hdr {
		return
	}
	ev := *(*udstraceAllocEvent)(unsafe.Pointer(&raw[0]))
	a := &event.Alloc{
		Time: ev.Ts, PID: ev.Pid, TID: ev.Tid, Comm: cString(ev.Comm[:]),
		Kind: event.Kind(ev.Kind), Size: ev.Size, Addr: ev.Addr, OldAddr: ev.OldAddr,
		OldSize: ev.OldSize, Failed: ev.Flags&flagFailed != 0, Inside: event.Kind(ev.Inside),
		Flags: ev.Aux, FD: int32(ev.Fd),
	}
	if a.Kind == event.Brk && int64(a.Size) < 0 {
		a.Shrink = true
		a.Size = -a.Size
	}
	payload := raw[hdr:]
	if n := int(ev.StackLen); n < len(payload) {
		payload = payload[:n]
	}
	a.Weighted, a.Untracked = ev.Flags&flagWeighted != 0, ev.Flags&flagUntracked != 0
	if a.Kind == event.Free {
		a.Caller = ev.Ip
		h.Alloc(a, &RawStack{})
		return
	}
	if ev.Flags&flagSampled != 0 {
		a.Sampled, a.StackID, a.Caller, a.Flags = true, int32(ev.Aux), ev.Ip, 0
		h.Alloc(a, &RawStack{})
		return
	}
	st := &RawStack{IP: ev.Ip, SP: ev.Sp, BP: ev.Bp, Short: ev.Flags&flagStackShort != 0}
	switch {
	case ev.Flags&flagStackFP != 0:
		st.PCs = make([]uint64, len(payload)/8)
		for i := range st.PCs {
			st.PCs[i] = *(*uint64)(unsafe.Pointer(&payload[i*8]))
		}
	case ev.Flags&flagStackCopy != 0:
		st.Copy = payload
	}
	h.Alloc(a, st)
}

func decodeProc(raw []byte, h Handler) {
	if len(raw) < int(unsafe.Sizeof(udstraceProcEvent{})) {
		return
	}
	ev := (*udstraceProcEvent)(unsafe.Pointer(&raw[0]))
	p := event.Proc{Time: ev.Ts, PID: ev.Pid, PPID: ev.Ppid, Comm: cString(ev.Comm[:])}
	switch ev.Type {
	case evExec:
		p.Kind, p.Exe = event.ProcExec, cString(ev.Name[:])
		h.Exec(&Exec{Proc: p, StartCode: ev.Addr, InterpBase: ev.Len, Dev: ev.Dev, Ino: ev.Ino})
	case evFork:
		p.Kind = event.ProcFork
		h.Proc(&p, nil, nil)
	case evExit:
		p.Kind, p.ExitCode = event.ProcExit, int(ev.ExitCode)
		h.Proc(&p, sockStats(ev.Pid, &ev.Sock), exitTotals(ev.Pid, ev.Totals[:]))
	case evMap:
		h.Map(&Mapping{PID: ev.Pid, Addr: ev.Addr, Len: ev.Len, Pgoff: ev.Pgoff, Dev: ev.Dev, Ino: ev.Ino, Name: cString(ev.Name[:])})
	}
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
