package serve

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/report"
)

// procLabels are the labels of every per-process metric. Their cardinality is bounded by
// --max-procs: past it, exited processes are folded into one entry per command (pid "0").
var procLabels = []string{"pid", "comm", "container_id", "pod_uid"}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("udstrace_"+name, help, labels, nil)
}

// The metrics, each documented in the README (Fleet).
var (
	heapCalls   = desc("heap_calls_total", "Allocator calls (malloc family, free excluded) made by the process, by function.", append(procLabels, "kind")...)
	heapBytes   = desc("heap_bytes_total", "Bytes asked of the allocator by the process, by function.", append(procLabels, "kind")...)
	heapFailed  = desc("heap_failed_calls_total", "Allocator calls that returned no memory, by function.", append(procLabels, "kind")...)
	freeCalls   = desc("frees_total", "Blocks the process freed (full mode).", procLabels...)
	outBytes    = desc("outstanding_bytes", "Bytes allocated and not freed yet, by source: heap (malloc family), mmap (anonymous mappings), brk (full mode; estimated with --sample-bytes).", append(procLabels, "source")...)
	outBlocks   = desc("outstanding_blocks", "Blocks allocated and not freed yet, by source: heap, mmap, brk (full mode; estimated with --sample-bytes).", append(procLabels, "source")...)
	anonCalls   = desc("anon_mmap_calls_total", "Anonymous mmap calls of the process (file mappings excluded).", procLabels...)
	anonBytes   = desc("anon_mmap_bytes_total", "Bytes mapped anonymously by the process's mmap calls (file mappings excluded).", procLabels...)
	brkBytes    = desc("brk_bytes_total", "Bytes the process's brk calls grew its heap by.", procLabels...)
	procsTraced = desc("processes", "Processes reported one by one (live and exited).")
	procsFolded = desc("folded_processes", "Exited processes folded by command past --max-procs.")
	lost        = desc("lost_events_total", "Events the kernel side could not deliver or track, by cause (their sum is the report's lost_events).", "cause")
	tableFull   = desc("kernel_table_full_total", "Inserts a kernel table refused (full, or no memory), by table.", "table")
	truncated   = desc("stack_truncated_events_total", "Events whose stack hit the frame limit (the events themselves arrived).")
	ringRecs    = desc("ring_records_total", "Records read from the event ring buffer.")
	ringBytes   = desc("ring_bytes_total", "Bytes read from the event ring buffer, with its 8-byte headers.")
	cpuSecs     = desc("tracer_cpu_seconds_total", "CPU time udstrace itself used, by mode (user, system).", "mode")
	peakRSS     = desc("tracer_peak_rss_bytes", "udstrace's peak resident memory (VmHWM).")
	snapTime    = desc("snapshot_timestamp_seconds", "When the figures served were taken (Unix time).")
	profBytes   = desc("profile_bytes", "Size of the last profiles cut, by profile (heap: cumulative pprof, interval: the last interval's pprof, otlp: its OTLP request).", "profile")
	otlpExports = desc("otlp_exports_total", "OTLP profile exports, by result (ok, failed, dropped: the previous one still under way).", "result")
	// --kernel: the kernel's own allocations in the traced tasks' context.
	kernelAllocs = desc("kernel_allocations_total", "Kernel allocations made in the process's context (--kernel), by kind (kmalloc, kmem_cache_alloc, page).", append(procLabels, "kind")...)
	kernelBytes  = desc("kernel_bytes_total", "Bytes of the kernel allocations made in the process's context (--kernel), by kind.", append(procLabels, "kind")...)
	kernelOut    = desc("kernel_outstanding_bytes", "Bytes of those kernel allocations not freed yet, by anyone (--kernel), by kind.", append(procLabels, "kind")...)
	kernelLeft   = desc("kernel_left_out_total", "Kernel allocations left out or incomplete (--kernel), by reason: interrupt (made in interrupt context while a traced task ran, never blamed on it), untracked (their free could not be watched), no_stack, lost (the ring had no room).", "reason")
)

var allDescs = []*prometheus.Desc{heapCalls, heapBytes, heapFailed, freeCalls, outBytes, outBlocks, anonCalls, anonBytes,
	brkBytes, procsTraced, procsFolded, lost, tableFull, truncated, ringRecs, ringBytes, cpuSecs, peakRSS, snapTime, profBytes, otlpExports,
	kernelAllocs, kernelBytes, kernelOut, kernelLeft}

// collector serves the figures of the latest snapshot: every scrape between two intervals sees
// the same consistent set.
type collector struct {
	mu      sync.Mutex
	metrics []prometheus.Metric
	otlp    *exporter // its outcomes are read at each scrape
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	ms := c.metrics
	c.mu.Unlock()
	for _, m := range ms {
		ch <- m
	}
	if c.otlp != nil {
		ch <- prometheus.MustNewConstMetric(otlpExports, prometheus.CounterValue, float64(c.otlp.ok.Load()), "ok")
		ch <- prometheus.MustNewConstMetric(otlpExports, prometheus.CounterValue, float64(c.otlp.failed.Load()), "failed")
		ch <- prometheus.MustNewConstMetric(otlpExports, prometheus.CounterValue, float64(c.otlp.dropped.Load()), "dropped")
	}
}

func (c *collector) set(ms []prometheus.Metric) {
	c.mu.Lock()
	c.metrics = ms
	c.mu.Unlock()
}

// procFigures are one label set's figures: a reused pid's incarnations, or folded entries of one
// command, are summed so that no label set is exposed twice.
type procFigures struct {
	labels                         []string
	heap                           map[string]report.CallCount
	frees                          uint64
	out                            [len(sources)]report.BlockCount
	anonCalls, anonBytes, brkBytes uint64
	kernel                         map[string]*kernelFigures // --kernel: by kind
}

type kernelFigures struct{ count, bytes, out uint64 }

// sources are the outstanding memory's sources, by the kind of call that allocated it.
var sources = [...]string{"heap", "mmap", "brk"}

func sourceOf(kind string) int {
	k, _ := event.KindByName(kind)
	switch {
	case k.IsHeap():
		return 0
	case k == event.Brk:
		return 2
	}
	return 1 // mmap, mremap
}

// metricsOf builds the exposition of r.
func metricsOf(r *report.Report, profSizes map[string]int) []prometheus.Metric {
	full := r.Mode != "count"
	containers := containersOf(r)
	labelsOf := func(pid uint32, comm string) []string {
		c := containers[pid]
		return []string{strconv.FormatUint(uint64(pid), 10), comm, c[0], c[1]}
	}
	byKey := map[string]*procFigures{}
	var order []*procFigures
	figures := func(pid uint32, comm string) *procFigures {
		ls := labelsOf(pid, comm)
		key := strings.Join(ls, "\x00")
		f := byKey[key]
		if f == nil {
			f = &procFigures{labels: ls, heap: map[string]report.CallCount{}}
			byKey[key] = f
			order = append(order, f)
		}
		return f
	}
	folded := 0
	for _, p := range r.Processes {
		f := figures(p.PID, p.Comm)
		for k, c := range p.HeapByKind {
			if k == "free" {
				continue
			}
			acc := f.heap[k]
			acc.Calls, acc.Bytes, acc.Failed = acc.Calls+c.Calls, acc.Bytes+c.Bytes, acc.Failed+c.Failed
			f.heap[k] = acc
		}
		f.frees += p.Frees
		f.anonCalls += p.MmapCalls - min(p.MappedFileCalls, p.MmapCalls)
		f.anonBytes += p.MmapBytes - min(p.MappedFileBytes, p.MmapBytes)
		f.brkBytes += p.BrkBytes
		folded += p.FoldedProcesses
	}
	for i := range r.Sites { // the outstanding memory by source: the sites' (file mappings are no allocations)
		s := &r.Sites[i]
		if s.FileBacked || (s.OutstandingCount == 0 && s.OutstandingBytes == 0) {
			continue
		}
		o := &figures(s.PID, s.Comm).out[sourceOf(s.Kind)]
		o.Count += s.OutstandingCount
		o.Bytes += s.OutstandingBytes
	}
	for i := range r.KernelSites { // --kernel
		s := &r.KernelSites[i]
		f := figures(s.PID, s.Comm)
		if f.kernel == nil {
			f.kernel = map[string]*kernelFigures{}
		}
		k := f.kernel[s.Kind]
		if k == nil {
			k = &kernelFigures{}
			f.kernel[s.Kind] = k
		}
		k.count += s.Count
		k.bytes += s.Bytes
		k.out += s.OutstandingBytes
	}
	var ms []prometheus.Metric
	add := func(d *prometheus.Desc, t prometheus.ValueType, v float64, ls ...string) {
		ms = append(ms, prometheus.MustNewConstMetric(d, t, v, ls...))
	}
	for _, f := range order {
		kinds := make([]string, 0, len(f.heap))
		for k := range f.heap {
			kinds = append(kinds, k)
		}
		slices.Sort(kinds)
		for _, k := range kinds {
			c := f.heap[k]
			kl := append(slices.Clone(f.labels), k)
			add(heapCalls, prometheus.CounterValue, float64(c.Calls), kl...)
			add(heapBytes, prometheus.CounterValue, float64(c.Bytes), kl...)
			add(heapFailed, prometheus.CounterValue, float64(c.Failed), kl...)
		}
		if full { // count mode traces no frees: nothing is outstanding
			add(freeCalls, prometheus.CounterValue, float64(f.frees), f.labels...)
			for i, src := range sources {
				sl := append(slices.Clone(f.labels), src)
				add(outBytes, prometheus.GaugeValue, float64(f.out[i].Bytes), sl...)
				add(outBlocks, prometheus.GaugeValue, float64(f.out[i].Count), sl...)
			}
			add(anonCalls, prometheus.CounterValue, float64(f.anonCalls), f.labels...)
			add(anonBytes, prometheus.CounterValue, float64(f.anonBytes), f.labels...)
			add(brkBytes, prometheus.CounterValue, float64(f.brkBytes), f.labels...)
		}
		kinds = kinds[:0]
		for k := range f.kernel {
			kinds = append(kinds, k)
		}
		slices.Sort(kinds)
		for _, k := range kinds {
			kf, kl := f.kernel[k], append(slices.Clone(f.labels), k)
			add(kernelAllocs, prometheus.CounterValue, float64(kf.count), kl...)
			add(kernelBytes, prometheus.CounterValue, float64(kf.bytes), kl...)
			add(kernelOut, prometheus.GaugeValue, float64(kf.out), kl...)
		}
	}
	if k := r.Kernel; k != nil {
		add(kernelLeft, prometheus.CounterValue, float64(k.InterruptLeftOut), "interrupt")
		add(kernelLeft, prometheus.CounterValue, float64(k.Untracked), "untracked")
		add(kernelLeft, prometheus.CounterValue, float64(k.NoStack), "no_stack")
		add(kernelLeft, prometheus.CounterValue, float64(k.Lost), "lost")
	}
	add(procsTraced, prometheus.GaugeValue, float64(len(r.Processes)))
	add(procsFolded, prometheus.GaugeValue, float64(folded))
	for _, c := range lostCauses(r.LostDetail) {
		add(lost, prometheus.CounterValue, float64(c.n), c.cause)
	}
	tf := r.LostDetail.TableFull
	for _, t := range []struct {
		name string
		n    uint64
	}{{"threads", tf.Threads}, {"syscalls_in_flight", tf.Syscalls}, {"processes", tf.Processes}, {"counts", tf.Counts},
		{"totals", tf.Totals}, {"sampled_blocks", tf.SampledBlocks}, {"socket_counters", tf.Sockets}, {"modules", tf.Modules},
		{"process_maps", tf.ProcessMaps}, {"map_generations", tf.MapGens}, {"stack_ids", tf.StackIDs}} {
		add(tableFull, prometheus.CounterValue, float64(t.n), t.name)
	}
	add(truncated, prometheus.CounterValue, float64(r.LostDetail.StackTruncated))
	add(ringRecs, prometheus.CounterValue, float64(r.Tracer.RingRecords))
	add(ringBytes, prometheus.CounterValue, float64(r.Tracer.RingBytes))
	add(cpuSecs, prometheus.CounterValue, r.Tracer.CPUUserSeconds, "user")
	add(cpuSecs, prometheus.CounterValue, r.Tracer.CPUSysSeconds, "system")
	add(peakRSS, prometheus.GaugeValue, float64(r.Tracer.PeakRSSBytes))
	if !r.End.IsZero() {
		add(snapTime, prometheus.GaugeValue, float64(r.End.UnixNano())/1e9)
	}
	names := make([]string, 0, len(profSizes))
	for n := range profSizes {
		names = append(names, n)
	}
	slices.SortFunc(names, cmp.Compare)
	for _, n := range names {
		add(profBytes, prometheus.GaugeValue, float64(profSizes[n]), n)
	}
	return ms
}

type lostCause struct {
	cause string
	n     uint64
}

// lostCauses splits lost_events into causes that add up to it: the ring buffer's drops, and the
// other losses (which include the tables' lost calls, untraced processes' calls and stale call
// states) taken apart.
func lostCauses(d report.LostDetail) []lostCause {
	table, untraced, stale := d.TableFull.LostCalls(), d.UntracedCalls, d.Stale
	rest := d.Other
	for _, n := range []*uint64{&table, &untraced, &stale} {
		*n = min(*n, rest) // never more than Other holds, so the causes add up to lost_events
		rest -= *n
	}
	return []lostCause{{"ring_buffer", d.RingBuffer}, {"kernel_table_full", table}, {"untraced_process", untraced},
		{"stale_call", stale}, {"other", rest}}
}

// containersOf gives each pid of r its container id and pod UID (pid 0, folded entries: none).
func containersOf(r *report.Report) map[uint32][2]string {
	out := map[uint32][2]string{}
	for _, p := range r.Processes {
		if p.FoldedProcesses == 0 && (p.ContainerID != "" || p.PodUID != "") {
			out[p.PID] = [2]string{p.ContainerID, p.PodUID}
		}
	}
	return out
}
