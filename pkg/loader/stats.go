package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/udstrace/udstrace/pkg/event"
)

// Lost is what the kernel side could not deliver or track, by reason, and every insert into a
// kernel table that failed, by table (bpf/udstrace.h enum lost_reason, in its order).
type Lost struct {
	RingBuffer uint64 // events dropped: ring buffer full
	Untracked  uint64 // calls not traced: no memory for a thread's state
	Stale      uint64 // call states discarded after a missed return
	NoStack    uint64 // events delivered without a user stack

	Syscalls      uint64 // memory syscalls not traced: sysinflight full
	Counts        uint64 // count-mode calls not counted: counts full
	Totals        uint64 // sampled calls missing from the exact totals: totals full
	SampledBlocks uint64 // picked blocks whose free cannot be reported: sampled_blocks full
	Sockets       uint64 // AF_UNIX socket calls not counted: sockstats full
	Processes     uint64 // processes not traced: targets full
	ProcessCalls  uint64 // allocator calls those processes made

	// Failed inserts that lose no event.
	Modules  uint64 // files whose frames stay raw addresses: modules full
	ProcMaps uint64 // mapping caches not shared: proc_maps full
	MapGens  uint64 // every mapping cache dropped at once: map_gens full
	StackIDs uint64 // stack ids sent again: stack_seen could not take them
}

// Lost sums the per-CPU loss counters.
func (t *Tracer) Lost() (Lost, error) {
	var out Lost
	dst := []*uint64{&out.RingBuffer, &out.Untracked, &out.Stale, &out.NoStack,
		&out.Syscalls, &out.Counts, &out.Totals, &out.SampledBlocks, &out.Sockets, &out.Processes, &out.ProcessCalls,
		&out.Modules, &out.ProcMaps, &out.MapGens, &out.StackIDs}
	if n := int(t.objs.Lost.MaxEntries()); n != len(dst) {
		return out, fmt.Errorf("reading loss counters: the object has %d, udstrace knows %d", n, len(dst))
	}
	for i, p := range dst {
		var perCPU []uint64
		if err := t.objs.Lost.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("reading loss counters: %w", err)
		}
		for _, n := range perCPU {
			*p += n
		}
	}
	return out, nil
}

// SocketStats returns the counters of processes that had not exited (exited ones came with their exit event).
func (t *Tracer) SocketStats() ([]event.SocketStats, error) {
	var out []event.SocketStats
	var pid uint32
	var st udstraceSockStats
	it := t.objs.Sockstats.Iterate()
	for it.Next(&pid, &st) {
		out = append(out, *sockStats(pid, &st))
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("reading socket counters: %w", err)
	}
	return out, nil
}

// Count is one aggregated count-mode entry: calls of one kind from one stack of one process.
type Count struct {
	PID     uint32
	Kind    event.Kind
	StackID uint64 // frames came as a stack record; 0: no stack
	Calls   uint64
	Bytes   uint64
}

// Counts reads count mode's in-kernel aggregation.
func (t *Tracer) Counts() ([]Count, error) {
	var out []Count
	var key udstraceCountKey
	var val udstraceCountVal
	it := t.objs.Counts.Iterate()
	for it.Next(&key, &val) {
		out = append(out, Count{PID: key.Tgid, Kind: event.Kind(key.Kind), StackID: key.Stack, Calls: val.Count, Bytes: val.Bytes})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("reading count-mode counters: %w", err)
	}
	return out, nil
}

// StackStats is how the stacks came out (none of it is a lost event).
type StackStats struct {
	Events     uint64 // events that carried a stack
	Distinct   uint64 // stack records sent (distinct stacks, and repeats after eviction)
	Fallback   uint64 // stacks finished in user space from a copy (a module's table was loading)
	Truncated  uint64 // stacks cut at a module whose table was loading, with no room for a copy
	Collisions uint64 // stack ids shared by two stacks (sent apart, never merged)
	Busy       uint64 // stacks the kernel could not follow: a mapping could not be read (mmap lock held); copied or cut
	Depth      uint64 // stacks that hit the frame limit
	ReqLost    uint64 // module requests with no ring room (asked again later)
	Memo       uint64 // stacks known without walking (the thread's last walk, same registers and stack words)
}

// StackStats sums the per-CPU stack counters.
func (t *Tracer) StackStats() (StackStats, error) {
	var out StackStats
	dst := []*uint64{&out.Events, &out.Distinct, &out.Fallback, &out.Truncated, &out.Collisions, &out.Busy, &out.Depth, &out.ReqLost, &out.Memo}
	for i, p := range dst {
		var perCPU []uint64
		if err := t.objs.StackStats.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("reading stack counters: %w", err)
		}
		for _, n := range perCPU {
			*p += n
		}
	}
	out.Events += out.Memo // the kernel counts walks (STK_EVENTS) and memo hits apart
	return out, nil
}

// Total is one process's exact calls and bytes of one allocator function (sampling); for free,
// Bytes counts the calls that released a block (free(NULL) releases none).
type Total struct {
	PID   uint32
	Kind  event.Kind
	Calls uint64
	Bytes uint64
}

// Totals reads sampled count mode's exact per-process totals.
func (t *Tracer) Totals() ([]Total, error) {
	var out []Total
	var key udstraceTotalKey
	var val udstraceCountVal
	it := t.objs.Totals.Iterate()
	for it.Next(&key, &val) {
		out = append(out, Total{PID: key.Tgid, Kind: event.Kind(key.Kind), Calls: val.Count, Bytes: val.Bytes})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("reading sampled totals: %w", err)
	}
	return out, nil
}

// DeadThreadStates counts entries left in the kernel's tables by threads or processes that no longer
// exist (a syscall in flight, a picked block): state that an exit failed to clear. Per-thread
// state in task storage (calls in flight, count mode's open batch) dies with its task.
func (t *Tracer) DeadThreadStates() (int, error) {
	a, err := deadKeys(t.objs.Sysinflight, func(k uint32) uint32 { return k })
	if err != nil {
		return a, err
	}
	b, err := deadKeys(t.objs.SampledBlocks, func(k udstraceSampledKey) uint32 { return k.Space })
	return a + b, err
}

// deadKeys counts the keys of m whose thread or process (named by id) is gone from /proc.
func deadKeys[K any](m *ebpf.Map, id func(K) uint32) (int, error) {
	dead := 0
	var prev any // nil: start from the first key
	for n := 0; n < int(m.MaxEntries()); n++ {
		var k K
		if err := m.NextKey(prev, &k); errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		} else if err != nil {
			return dead, fmt.Errorf("reading %s: %w", m, err)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", id(k))); errors.Is(err, os.ErrNotExist) {
			dead++
		}
		prev = k
	}
	return dead, nil
}

// ForgetSampled deletes a process's picked blocks from the kernel's table once the process exited
// or exec'd, so the table holds only live blocks; addrs are the blocks user space still holds.
// The table is keyed by address space (bpf/sample.h): pid's own, not one it shared with a parent.
func (t *Tracer) ForgetSampled(pid uint32, addrs []uint64) error {
	if len(addrs) == 0 {
		return nil
	}
	keys := make([]udstraceSampledKey, len(addrs))
	for i, a := range addrs {
		keys[i] = udstraceSampledKey{Space: pid, Addr: a}
	}
	// A batch stops at the first key not there (blocks a forked child inherited are its parent's):
	// then delete one by one.
	if _, err := t.objs.SampledBlocks.BatchDelete(keys, nil); err != nil {
		for _, k := range keys {
			_ = t.objs.SampledBlocks.Delete(k)
		}
	}
	return nil
}
