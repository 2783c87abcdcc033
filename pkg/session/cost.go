package session

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
)

// lostMeta turns the kernel's counters into the report's: lost events, and how stacks came out.
func (s *Session) lostMeta(lost loader.Lost, st loader.StackStats) (report.LostEvents, report.StackStats) {
	used, capacity := s.tracer.TableUse()
	s.tables.mu.Lock()
	modules, pages, cached, took := s.tables.modules, s.tables.pages, s.tables.cached, s.tables.took
	s.tables.mu.Unlock()
	out := report.StackStats{
		Events: st.Events, Distinct: st.Distinct, Fallback: st.Fallback, Truncated: st.Truncated,
		Collisions: st.Collisions, Busy: st.Busy, Depth: st.Depth, Memo: st.Memo,
		TableModules: modules, TablePages: pages + cached, TableCached: cached, TableRows: uint64(used), TableCapacity: uint64(capacity), TableSeconds: took.Seconds(),
	}
	if s.opts.Stack == "cfi" {
		out.Fallback = st.Events
	}
	tables := report.TableFull{
		Threads: lost.Untracked, Syscalls: lost.Syscalls, Processes: lost.Processes, Counts: lost.Counts,
		Totals: lost.Totals, SampledBlocks: lost.SampledBlocks, Sockets: lost.Sockets,
		Modules: lost.Modules, ProcessMaps: lost.ProcMaps, MapGens: lost.MapGens, StackIDs: lost.StackIDs,
	}
	return report.LostEvents{
		RingBuffer: lost.RingBuffer, Other: tables.LostCalls() + lost.Stale + lost.ProcessCalls,
		Stale: lost.Stale, UntracedProcesses: lost.Processes, UntracedCalls: lost.ProcessCalls, TableFull: tables,
		StackTruncated: lost.NoStack + st.Truncated + st.Depth,
	}, out
}

// selfCost reads what the trace has cost udstrace itself: ring traffic, CPU, peak memory.
func (s *Session) selfCost() report.TracerStats {
	var out report.TracerStats
	out.RingRecords, out.RingBytes = s.tracer.RingTraffic()
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		out.CPUUserSeconds = time.Duration(ru.Utime.Nano()).Seconds()
		out.CPUSysSeconds = time.Duration(ru.Stime.Nano()).Seconds()
	}
	out.PeakRSSBytes = peakRSS()
	return out
}

// peakRSS is udstrace's peak resident memory, VmHWM: the high-water mark of this address space
// alone. Not getrusage's ru_maxrss, which keeps the peak of the image before exec: started by a
// big process, udstrace would report that process's size as its own.
func peakRSS() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kib << 10
		}
	}
	return 0
}
