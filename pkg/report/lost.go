package report

import (
	"fmt"
	"strings"
)

// lossWarnings says first what was lost, what it makes unreliable and what would have helped:
// they lead the warnings, and the text report's header says there are some before any figure.
func lossWarnings(meta Meta) []string {
	var out []string
	l := meta.Lost
	if l.RingBuffer > 0 {
		ring := "a larger --ring-size"
		if meta.RingBytes > 0 {
			ring = fmt.Sprintf("--ring-size %d (4× this one)", uint64(meta.RingBytes)*4)
		}
		out = append(out, fmt.Sprintf("%s lost: the ring buffer was full; outstanding blocks and unmatched frees are unreliable (use %s, or --sample-bytes 524288 to trace a sample)", plural(l.RingBuffer, "event"), ring))
	}
	tables := "a larger --table-size"
	if meta.TableSize > 0 {
		tables = fmt.Sprintf("--table-size %d (4× this one)", uint64(meta.TableSize)*4)
	}
	if l.UntracedProcesses > 0 {
		out = append(out, fmt.Sprintf("%s not traced: the kernel's table of traced processes was full; their %s are missing from the report (use %s)",
			plural(l.UntracedProcesses, "process"), plural(l.UntracedCalls, "allocator call"), tables))
	}
	t := l.TableFull
	if n := t.LostCalls(); n > 0 {
		out = append(out, fmt.Sprintf("%s not traced: kernel tables were full (%s); outstanding blocks and unmatched frees are unreliable (use %s)",
			plural(n, "call"), tableList(t.lossy()), tables))
	}
	if rest := l.Other - min(l.Other, t.LostCalls()+l.Stale+l.UntracedCalls); rest > 0 { // a cause not broken down
		out = append(out, fmt.Sprintf("%s not traced; outstanding blocks and unmatched frees are unreliable (use %s)", plural(rest, "call"), tables))
	}
	if l.Stale > 0 {
		out = append(out, fmt.Sprintf("%s lost their return probe (state discarded): their allocations are missing; outstanding blocks and unmatched frees are unreliable",
			plural(l.Stale, "allocator call")))
	}
	if noLoss := t.harmless(); len(noLoss) > 0 {
		out = append(out, fmt.Sprintf("kernel tables were full, no event lost: %s (use %s)", tableList(noLoss), tables))
	}
	if s := meta.Stacks; s.Truncated > 0 {
		out = append(out, fmt.Sprintf("%s stop early, at a frame whose unwind table was still loading (no event was lost; traced again, the unwind cache has the tables)", plural(s.Truncated, "stack")))
	}
	return out
}

// tableCount is one table's refused inserts, with what each cost.
type tableCount struct {
	what string
	n    uint64
}

func (t TableFull) lossy() []tableCount {
	return []tableCount{
		{"thread state (no memory)", t.Threads}, {"memory syscalls in flight", t.Syscalls}, {"count-mode sites", t.Counts},
		{"sampled totals", t.Totals}, {"picked blocks", t.SampledBlocks}, {"socket counters", t.Sockets},
	}
}

func (t TableFull) harmless() []tableCount {
	var out []tableCount
	for _, c := range []tableCount{
		{"modules, frames left as addresses", t.Modules}, {"shared mapping caches", t.ProcessMaps},
		{"mapping generations, every cache dropped", t.MapGens}, {"stack ids, frames sent again", t.StackIDs},
	} {
		if c.n > 0 {
			out = append(out, c)
		}
	}
	return out
}

// tableList names the tables that refused inserts: "count-mode sites 12, picked blocks 3".
func tableList(cs []tableCount) string {
	var parts []string
	for _, c := range cs {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", c.what, commas(c.n)))
		}
	}
	return strings.Join(parts, ", ")
}
