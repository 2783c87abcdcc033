package serve

import (
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/udstrace/udstrace/pkg/report"
)

// gather registers ms as a collector would serve them and gathers them as a scrape does: it
// fails on a label set exposed twice.
func gather(t *testing.T, ms []prometheus.Metric) map[string][]*dto.Metric {
	t.Helper()
	c := &collector{}
	c.set(ms)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	out := map[string][]*dto.Metric{}
	for _, f := range fams {
		out[f.GetName()] = f.Metric
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return -1
}

func find(t *testing.T, ms []*dto.Metric, want map[string]string) float64 {
	t.Helper()
next:
	for _, m := range ms {
		for k, v := range want {
			if label(m, k) != v {
				continue next
			}
		}
		return value(m)
	}
	t.Fatalf("no metric with labels %v", want)
	return 0
}

// A reused pid's two incarnations (same comm) and two folded entries of one command (pid 0) are
// each one label set, summed: a scrape would fail on a label set exposed twice.
func TestMetricsSumSharedLabelSets(t *testing.T) {
	r := &report.Report{Mode: "full", Processes: []report.Process{
		{PID: 7, Comm: "w", Frees: 1, HeapByKind: map[string]report.CallCount{"malloc": {Calls: 2, Bytes: 20}, "free": {Calls: 1}}},
		{PID: 7, Comm: "w", Frees: 2, HeapByKind: map[string]report.CallCount{"malloc": {Calls: 3, Bytes: 30, Failed: 1}}},
		{PID: 0, Comm: "sh", FoldedProcesses: 4, HeapByKind: map[string]report.CallCount{"calloc": {Calls: 1, Bytes: 8}}},
		{PID: 0, Comm: "sh", FoldedProcesses: 2, HeapByKind: map[string]report.CallCount{"calloc": {Calls: 1, Bytes: 8}}},
	}}
	got := gather(t, metricsOf(r, nil))
	if v := find(t, got["udstrace_heap_calls_total"], map[string]string{"pid": "7", "kind": "malloc"}); v != 5 {
		t.Errorf("pid 7 malloc calls %v, want 5", v)
	}
	if v := find(t, got["udstrace_heap_failed_calls_total"], map[string]string{"pid": "7", "kind": "malloc"}); v != 1 {
		t.Errorf("pid 7 failed mallocs %v, want 1", v)
	}
	if v := find(t, got["udstrace_heap_bytes_total"], map[string]string{"pid": "0", "comm": "sh", "kind": "calloc"}); v != 16 {
		t.Errorf("folded sh calloc bytes %v, want 16", v)
	}
	if v := find(t, got["udstrace_frees_total"], map[string]string{"pid": "7"}); v != 3 {
		t.Errorf("pid 7 frees %v, want 3", v)
	}
	if v := find(t, got["udstrace_folded_processes"], nil); v != 6 {
		t.Errorf("folded processes %v, want 6", v)
	}
	for _, m := range got["udstrace_heap_calls_total"] {
		if label(m, "kind") == "free" {
			t.Errorf("free counted as a heap call: %v", m)
		}
	}
}

// Outstanding memory comes by source from the sites, file mappings left out; count mode, which
// traces no frees, exposes no outstanding or frees at all.
func TestMetricsOutstandingBySource(t *testing.T) {
	sites := []report.Site{
		{ID: 1, PID: 9, Comm: "a", Kind: "malloc", OutstandingCount: 2, OutstandingBytes: 100},
		{ID: 2, PID: 9, Comm: "a", Kind: "memalign", OutstandingCount: 1, OutstandingBytes: 64},
		{ID: 3, PID: 9, Comm: "a", Kind: "mmap", OutstandingCount: 1, OutstandingBytes: 4096},
		{ID: 4, PID: 9, Comm: "a", Kind: "mmap", OutstandingCount: 1, OutstandingBytes: 8192, FileBacked: true},
		{ID: 5, PID: 9, Comm: "a", Kind: "brk", OutstandingCount: 1, OutstandingBytes: 135168},
	}
	r := &report.Report{Mode: "full", Processes: []report.Process{{PID: 9, Comm: "a", MmapCalls: 2, MmapBytes: 4096 + 8192,
		MappedFileCalls: 1, MappedFileBytes: 8192}}, Sites: sites}
	got := gather(t, metricsOf(r, nil))
	for src, want := range map[string][2]float64{"heap": {164, 3}, "mmap": {4096, 1}, "brk": {135168, 1}} {
		if v := find(t, got["udstrace_outstanding_bytes"], map[string]string{"pid": "9", "source": src}); v != want[0] {
			t.Errorf("%s outstanding bytes %v, want %v", src, v, want[0])
		}
		if v := find(t, got["udstrace_outstanding_blocks"], map[string]string{"pid": "9", "source": src}); v != want[1] {
			t.Errorf("%s outstanding blocks %v, want %v", src, v, want[1])
		}
	}
	if v := find(t, got["udstrace_anon_mmap_bytes_total"], map[string]string{"pid": "9"}); v != 4096 {
		t.Errorf("anonymous mmap bytes %v, want 4096", v)
	}
	r.Mode = "count"
	got = gather(t, metricsOf(r, nil))
	for _, name := range []string{"udstrace_outstanding_bytes", "udstrace_frees_total"} {
		if len(got[name]) > 0 {
			t.Errorf("count mode exposes %s", name)
		}
	}
}

// The lost events' causes add up to lost_events, however the kernel's counters overlap.
func TestLostCausesAddUp(t *testing.T) {
	for _, d := range []report.LostDetail{
		{RingBuffer: 5, Other: 10, Stale: 2, UntracedCalls: 3, TableFull: report.TableFull{Threads: 1, Counts: 2}},
		{Other: 1, Stale: 4, TableFull: report.TableFull{Threads: 9}}, // counters past Other: clamped
		{RingBuffer: 3},
	} {
		var sum uint64
		for _, c := range lostCauses(d) {
			sum += c.n
		}
		if sum != d.RingBuffer+d.Other {
			t.Errorf("%+v: causes add up to %d, lost_events %d", d, sum, d.RingBuffer+d.Other)
		}
	}
	c := lostCauses(report.LostDetail{RingBuffer: 5, Other: 10, Stale: 2, UntracedCalls: 3, TableFull: report.TableFull{Threads: 1, Counts: 2}})
	want := []lostCause{{"ring_buffer", 5}, {"kernel_table_full", 3}, {"untraced_process", 3}, {"stale_call", 2}, {"other", 2}}
	for i := range want {
		if c[i] != want[i] {
			t.Errorf("cause %d: %+v, want %+v", i, c[i], want[i])
		}
	}
}

func values(t *testing.T, p *profile.Profile, sample string) map[int64]int64 {
	t.Helper()
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == sample {
			idx = i
		}
	}
	if idx < 0 {
		t.Fatalf("no sample type %s", sample)
	}
	out := map[int64]int64{}
	for _, s := range p.Sample {
		out[s.NumLabel["site"][0]] += s.Value[idx]
	}
	return out
}

// The interval profile's alloc_* values are what each site allocated since the previous cut,
// inuse_* what it holds now; a folded entry, whose id changes from cut to cut, is followed by
// process, kind and module.
func TestIntervalProfile(t *testing.T) {
	stack := []report.StackFrame{{Symbol: "main", Function: "main", Module: "/bin/x"}}
	fold := []report.StackFrame{{Symbol: "libfoo.so"}}
	t0 := time.Unix(1000, 0)
	snap := func(end time.Duration, a, b report.Site) *report.Report {
		return &report.Report{Mode: "full", Start: t0, End: t0.Add(end), DurationSeconds: end.Seconds(), Sites: []report.Site{a, b}}
	}
	var pr profiler
	_, iv := pr.cut(snap(time.Second,
		report.Site{ID: 1, PID: 3, Kind: "malloc", Count: 10, Bytes: 1000, OutstandingCount: 4, OutstandingBytes: 400, Stack: stack},
		report.Site{ID: 2, PID: 3, Kind: "malloc", Count: 5, Bytes: 50, FoldedSites: 3, Stack: fold}))
	if got := values(t, iv, "alloc_space"); got[1] != 1000 || got[2] != 50 {
		t.Errorf("first interval alloc_space %v: want everything so far", got)
	}
	cum, iv := pr.cut(snap(3*time.Second,
		report.Site{ID: 1, PID: 3, Kind: "malloc", Count: 12, Bytes: 1300, OutstandingCount: 1, OutstandingBytes: 100, Stack: stack},
		report.Site{ID: 7, PID: 3, Kind: "malloc", Count: 9, Bytes: 90, FoldedSites: 4, Stack: fold}))
	if got := values(t, iv, "alloc_space"); got[1] != 300 || got[7] != 40 {
		t.Errorf("second interval alloc_space %v, want site 1: 300, folded 7: 40", got)
	}
	if got := values(t, iv, "alloc_objects"); got[1] != 2 || got[7] != 4 {
		t.Errorf("second interval alloc_objects %v, want site 1: 2, folded 7: 4", got)
	}
	if got := values(t, iv, "inuse_space"); got[1] != 100 {
		t.Errorf("second interval inuse_space %v, want site 1: 100 (held now)", got)
	}
	if got := values(t, cum, "alloc_space"); got[1] != 1300 || got[7] != 90 {
		t.Errorf("cumulative alloc_space %v, want the totals", got)
	}
	if iv.TimeNanos != t0.Add(time.Second).UnixNano() || iv.DurationNanos != int64(2*time.Second) {
		t.Errorf("interval profile time %d duration %d, want the previous cut's end and 2 s", iv.TimeNanos, iv.DurationNanos)
	}
	for _, p := range []*profile.Profile{cum, iv} {
		if _, err := encode(p); err != nil {
			t.Error(err)
		}
	}
}

// A process's container id and pod UID label its metrics and its profile samples; a process
// outside containers gets none.
func TestContainerLabels(t *testing.T) {
	r := &report.Report{Mode: "full",
		Processes: []report.Process{{PID: 5, Comm: "app", ContainerID: "c1", PodUID: "u1"}, {PID: 6, Comm: "host"}},
		Sites: []report.Site{
			{ID: 1, PID: 5, Comm: "app", Kind: "malloc", Count: 1, Bytes: 8, OutstandingCount: 1, OutstandingBytes: 8},
			{ID: 2, PID: 6, Comm: "host", Kind: "malloc", Count: 1, Bytes: 8},
		}}
	got := gather(t, metricsOf(r, nil))
	if v := find(t, got["udstrace_outstanding_bytes"], map[string]string{"pid": "5", "container_id": "c1", "pod_uid": "u1", "source": "heap"}); v != 8 {
		t.Errorf("app's outstanding %v, want 8", v)
	}
	find(t, got["udstrace_outstanding_bytes"], map[string]string{"pid": "6", "container_id": "", "pod_uid": ""})
	var pr profiler
	cum, iv := pr.cut(r)
	for _, p := range []*profile.Profile{cum, iv} {
		for _, s := range p.Sample {
			pid := s.NumLabel["pid"][0]
			if c := s.Label["container_id"]; (pid == 5) != (len(c) == 1 && c[0] == "c1") {
				t.Errorf("pid %d sample labelled container_id %v", pid, c)
			}
			if u := s.Label["pod_uid"]; (pid == 5) != (len(u) == 1 && u[0] == "u1") {
				t.Errorf("pid %d sample labelled pod_uid %v", pid, u)
			}
		}
	}
}

// TestKernelMetrics: --kernel's allocations are exposed per process and kind, summed over a
// reused pid's sites, with what the kernel half left out by reason; without --kernel there are none.
func TestKernelMetrics(t *testing.T) {
	r := &report.Report{Mode: "full", Processes: []report.Process{{PID: 7, Comm: "srv"}},
		KernelSites: []report.KernelSite{
			{ID: 1, PID: 7, Comm: "srv", Kind: "kmalloc", Count: 200, Bytes: 204800, OutstandingBytes: 1024},
			{ID: 2, PID: 7, Comm: "srv", Kind: "kmalloc", Count: 100, Bytes: 51200},
			{ID: 3, PID: 7, Comm: "srv", Kind: "kmem_cache_alloc", Count: 300, Bytes: 69600},
		},
		Kernel: &report.KernelReport{Allocations: 600, InterruptLeftOut: 9, Untracked: 2},
	}
	got := gather(t, metricsOf(r, nil))
	for kind, want := range map[string][3]float64{"kmalloc": {300, 256000, 1024}, "kmem_cache_alloc": {300, 69600, 0}} {
		ls := map[string]string{"pid": "7", "comm": "srv", "kind": kind}
		if v := find(t, got["udstrace_kernel_allocations_total"], ls); v != want[0] {
			t.Errorf("%s allocations %v, want %v", kind, v, want[0])
		}
		if v := find(t, got["udstrace_kernel_bytes_total"], ls); v != want[1] {
			t.Errorf("%s bytes %v, want %v", kind, v, want[1])
		}
		if v := find(t, got["udstrace_kernel_outstanding_bytes"], ls); v != want[2] {
			t.Errorf("%s outstanding %v, want %v", kind, v, want[2])
		}
	}
	if v := find(t, got["udstrace_kernel_left_out_total"], map[string]string{"reason": "interrupt"}); v != 9 {
		t.Errorf("interrupt left out %v, want 9", v)
	}
	r.KernelSites, r.Kernel = nil, nil
	if got := gather(t, metricsOf(r, nil)); len(got["udstrace_kernel_allocations_total"]) != 0 || len(got["udstrace_kernel_left_out_total"]) != 0 {
		t.Error("kernel metrics exposed without --kernel")
	}
}
