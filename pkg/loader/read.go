package loader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/kstack"
)

// Record types and flags, numbered as bpf/udstrace.h.
const (
	evAlloc = 1 + iota
	evExec
	evFork
	evExit
	evMap
	evFree
	evSys
	evCopy
	evStack
	evModule
	evPage
	evSock
	evRename
)

const (
	flagFailed     = 1
	flagStackTrunc = 2
	flagStackRaw   = 4
	flagStackShort = 8
	flagSampled    = 16
	flagWeighted   = 32
	flagUntracked  = 64
)

// MapEntry is one executable mapping the kernel had cached for the thread: where a module is.
type MapEntry struct {
	Start, End, Pgoff uint64
	Mod               uint32
}

// CopiedStack is a stack, from some frame on, that the kernel could not unwind: the frames before
// it (a stack id, 0 for none), the registers at that frame, the thread's cached mappings and a
// copy of the stack from sp upward. It is only valid during Handler.Copied.
type CopiedStack struct {
	Prefix     uint64
	IP, SP, BP uint64
	Exact      bool // IP is where execution was (not a return address)
	Short      bool // the copy was shortened to stay inside the stack
	Maps       []MapEntry
	Bytes      []byte
	buf        []byte // the record buffer Bytes lies in, recycled with the record
	// Ticket is the handler's: set by Early.EarlyCopy (work started on the copy as soon as it
	// was drained), read back by Handler.Copied.
	Ticket any
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
	Name             string // the file's path, or its last component when the kernel could not build it
	Time             uint64 // CLOCK_MONOTONIC ns
	Exec             bool   // an executable mapping; else a data file (EV_MAP says which file for the report)
}

// ModuleRequest is a file the kernel met in a stack before user space knew it: it gave it
// module id Mod and needs its unwind table (and user space its symbols).
type ModuleRequest struct {
	Mapping
	Mod  uint32
	Comm string
}

// PageRequest is a page of a ready module's rows the kernel needs: a stack passed through it.
type PageRequest struct {
	Time uint64 // CLOCK_MONOTONIC ns the kernel asked
	PID  uint32
	Mod  uint32
	Page uint32 // file offset >> ktable.PageShift
}

// Handler receives events in ring-buffer order, on one goroutine that is not the one draining the
// ring, so a slow event never stalls the kernel.
type Handler interface {
	// Alloc: allocator calls, frees, memory syscalls and sampled calls, their stacks by id.
	Alloc(a *event.Alloc)
	// Copied: an event whose stack must be finished in user space; c is reused after the call.
	Copied(a *event.Alloc, c *CopiedStack)
	// Stack: the frames of a new stack id (the kernel sends each once; an event may name an id
	// just before its frames arrive, when another CPU sent them).
	Stack(id uint64, frames []kstack.Frame, truncated bool)
	Exec(e *Exec)
	// FirstSocket: a process made its first AF_UNIX socket call at time t (CLOCK_MONOTONIC ns).
	FirstSocket(pid uint32, t uint64)
	// Proc: sock and totals (exact calls with sampling) come with exits only.
	Proc(p *event.Proc, sock *event.SocketStats, totals []Total)
	Map(m *Mapping)
}

// Early is what a Handler may also implement to hear at once of work that cannot wait for the
// events queued ahead (loading unwind tables): requests come on a ring of their own, read on a
// goroutine of their own; exec and mapping events are also shown here as soon as they are drained.
type Early interface {
	EarlyPage(p PageRequest)
	EarlyModule(m *ModuleRequest)
	EarlyExec(e *Exec)
	EarlyMap(m *Mapping)
	// EarlyCopy sees a copied stack as soon as it is drained, to start unwinding it (and loading
	// the pages of rows it passes through) before the events ahead of it are handled.
	EarlyCopy(pid uint32, c *CopiedStack)
}

// DrainEvery bounds how long an event waits in the ring buffer for a batch to fill.
const DrainEvery = 100 * time.Millisecond

const (
	batchLen   = 256
	maxBatches = 128 // queued between the drain and the handler; past that the ring itself waits
)

// Read delivers events until ctx is done, then delivers what is left in the ring buffer and
// returns once the handler has seen everything.
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
	if early, ok := h.(Early); ok {
		req, err := ringbuf.NewReader(t.objs.Requests)
		if err != nil {
			return fmt.Errorf("opening request ring: %w", err)
		}
		defer req.Close()
		stopReq := context.AfterFunc(ctx, func() { _ = req.Flush() })
		defer stopReq()
		reqDone := make(chan struct{})
		go func() { defer close(reqDone); readRequests(ctx, req, early) }()
		defer func() { <-reqDone }()
	}
	q := newQueue()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for b := range q.full {
			for i := range b.recs[:b.n] {
				b.recs[i].deliver(h)
			}
			q.recycle(b)
		}
	}()
	err = t.drain(ctx, rd, q, h)
	close(q.full)
	<-done
	return err
}

// drain copies records out of the ring into batches as fast as it can; nothing else runs here.
func (t *Tracer) drain(ctx context.Context, rd *ringbuf.Reader, q *queue, h Handler) error {
	early, _ := h.(Early)
	var rec ringbuf.Record
	b := q.get()
	final := false
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			t.ringRecords.Add(1)
			t.ringBytes.Add(uint64(len(rec.RawSample) + 8)) // with the ring's own 8-byte header
			r := &b.recs[b.n]
			if r.decodeRecord(&rec) {
				if early != nil {
					r.early(early)
				}
				b.n++
			}
			if b.n == len(b.recs) || rec.Remaining == 0 {
				q.put(b)
				b = q.get()
			}
		case errors.Is(err, ringbuf.ErrFlushed):
			if b.n > 0 {
				q.put(b)
				b = q.get()
			}
			if ctx.Err() != nil {
				if !final { // this may be a periodic flush from before the end: drain once more
					final = true
					_ = rd.Flush()
					continue
				}
				q.recycle(b)
				return nil // everything written before the end has been delivered
			}
		case errors.Is(err, ringbuf.ErrClosed):
			q.put(b)
			return nil
		default:
			q.put(b)
			return fmt.Errorf("reading ring buffer: %w", err)
		}
	}
}

// readRequests hands each table request to early as soon as the kernel makes it.
func readRequests(ctx context.Context, rd *ringbuf.Reader, early Early) {
	var rec ringbuf.Record
	var r record
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			if r.decode(rec.RawSample) {
				r.early(early)
			}
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return
			}
		default:
			return
		}
	}
}

// RingTraffic reports the records read from the event ring so far and their bytes (with the
// ring's 8-byte record headers).
func (t *Tracer) RingTraffic() (records, bytes uint64) {
	return t.ringRecords.Load(), t.ringBytes.Load()
}

// queue hands batches from the drain to the handler and back, allocating at most maxBatches.
type queue struct {
	full, free chan *batch
	made       int
}

type batch struct {
	recs [batchLen]record
	n    int
}

func newQueue() *queue {
	return &queue{full: make(chan *batch, maxBatches), free: make(chan *batch, maxBatches)}
}

func (q *queue) get() *batch {
	select {
	case b := <-q.free:
		return b
	default:
	}
	if q.made < maxBatches {
		q.made++
		return &batch{}
	}
	return <-q.free // the handler is behind: wait for it (the ring buffer absorbs the wait)
}

func (q *queue) put(b *batch) { q.full <- b }

func (q *queue) recycle(b *batch) {
	for i := range b.recs[:b.n] {
		b.recs[i].reset()
	}
	b.n = 0
	q.free <- b
}

// chkStack confirms the kernel and kstack hash stacks alike: a stack's frames must give its id.
func chkStack(id uint64, frames []kstack.Frame, truncated bool) bool {
	var flags uint8
	if truncated {
		flags = kstack.Truncated
	}
	return kstack.ID(frames, flags) == id || id&(1<<63) != 0 // a collision's id is its check hash
}
