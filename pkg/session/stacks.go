package session

import (
	"sync"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/kstack"
	"github.com/udstrace/udstrace/pkg/procmaps"
)

// flagCaller marks, in a user-space stack id, a stack made of a free's caller alone: its frame 0
// is a return address, where a kernel stack's frame 0 is the allocator's own pc.
const flagCaller = 4

// stackStore keeps every stack id's frames: as the kernel sent them, or as user space finished a
// copied stack. Reports decode them lazily; events only carry ids.
type stackStore struct {
	mu      sync.Mutex
	maps    *procmaps.Table
	raw     map[uint64]stackEntry
	decoded map[uint64][]event.Frame
	warm    symbolWarmer
}

type stackEntry struct {
	frames    []kstack.Frame
	truncated bool // it stops at a module whose unwind table was loading
	caller    bool // a free's caller alone: every frame is a return address
}

func newStackStore(maps *procmaps.Table) *stackStore {
	st := &stackStore{maps: maps, raw: map[uint64]stackEntry{}, decoded: map[uint64][]event.Frame{}}
	st.warm.start(maps)
	return st
}

// put records the kernel's frames of a stack id (sent again after an eviction: same frames).
func (st *stackStore) put(id uint64, frames []kstack.Frame, truncated bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.raw[id]; !ok {
		st.raw[id] = stackEntry{frames: frames, truncated: truncated}
		st.warm.modulesOf(frames)
	}
}

func (st *stackStore) get(id uint64) ([]kstack.Frame, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.raw[id]
	return e.frames, ok
}

// intern stores frames finished in user space under the id the kernel would give them.
func (st *stackStore) intern(frames []kstack.Frame, caller bool) uint64 {
	var flags uint8
	if caller {
		flags = flagCaller
	}
	return st.store(frames, flags, stackEntry{frames: frames, caller: caller})
}

// internFlags stores frames named in user space; truncated: they stop early.
func (st *stackStore) internFlags(frames []kstack.Frame, truncated bool) uint64 {
	var flags uint8
	if truncated {
		flags = kstack.Truncated
	}
	return st.store(frames, flags, stackEntry{frames: frames, truncated: truncated})
}

func (st *stackStore) store(frames []kstack.Frame, flags uint8, e stackEntry) uint64 {
	if len(frames) == 0 {
		return 0
	}
	id := kstack.ID(frames, flags)
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.raw[id]; !ok {
		st.raw[id] = e
		st.warm.modulesOf(frames)
	}
	return id
}

// missing counts ids that events named but whose frames never arrived.
func (st *stackStore) missing(ids []uint64) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := st.raw[id]; !ok {
			n++
		}
	}
	return n
}

// resolve decodes a stack id into the report's frames; decoded stacks are kept once every
// module in them is known.
func (st *stackStore) resolve(id uint64) []event.Frame {
	st.mu.Lock()
	if d, ok := st.decoded[id]; ok {
		st.mu.Unlock()
		return d
	}
	e, ok := st.raw[id]
	st.mu.Unlock()
	if !ok {
		return nil
	}
	out := make([]event.Frame, len(e.frames))
	complete := true
	for i, f := range e.frames {
		out[i] = st.maps.Frame(f, i > 0 || e.caller)
		if f.Module() != 0 && out[i].BuildID == "" && out[i].Module == "[unknown module]" {
			complete = false
		}
	}
	if complete {
		st.mu.Lock()
		st.decoded[id] = out
		st.mu.Unlock()
	}
	return out
}

// stopWarming stops queuing modules to warm and returns a wait for the loads under way.
func (st *stackStore) stopWarming() func() {
	st.mu.Lock()
	st.warm.stop()
	st.mu.Unlock()
	return st.warm.wait
}
