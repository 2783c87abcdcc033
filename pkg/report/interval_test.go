package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/pkg/event"
)

func TestIntervals(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	meta := Meta{Start: start, Lost: LostEvents{RingBuffer: 2}}
	b := NewBuilder(testOpts(Options{}))
	feed(t, b,
		al(1, 1, event.Malloc, 100, 0x10, stMain),
		al(2, 1, event.Malloc, 10, 0x20, stHelper),
		al(3, 2, event.Malloc, 7, 0x10, stFdopen),
		exit(4, 2, 0),
	)
	iv := NewIntervals(2)
	r1 := b.Finish(&fakeSym{}, meta)
	i1 := iv.Next(r1, start.Add(time.Second))
	if i1.Seq != 1 || i1.IntervalSeconds != 1 || i1.LostEvents != 2 || len(i1.TopSites) != 2 || i1.TopSites[0].DeltaBytes != 100 {
		t.Errorf("first interval = %+v", i1)
	}
	if p := i1.Processes[0]; p.DeltaAllocations != 2 || p.DeltaBytes != 110 || p.Allocations != 2 {
		t.Errorf("first interval pid 1 = %+v", p)
	}

	feed(t, b,
		al(10, 1, event.Malloc, 1000, 0x30, stHelper),
		al(11, 1, event.Malloc, 5, 0x40, stHelper),
		al(12, 1, event.Free, 0, 0x10, stMain),
		al(13, 1, event.Free, 0, 0x30, stMain),
		al(14, 1, event.Malloc, 50, 0x50, stFgetc),
		al(15, 2, event.Malloc, 3, 0x10, stFdopen), // pid 2 reused: a new process, a new site
		al(16, 3, event.Malloc, 1, 0x10, stMain),
	)
	meta.Lost.Other = 1
	r2 := b.Finish(&fakeSym{}, meta)
	ids := map[int]Site{}
	for _, s := range r1.Sites {
		ids[s.ID] = s
	}
	for _, s := range r2.Sites {
		if old, ok := ids[s.ID]; ok && (old.PID != s.PID || old.Kind != s.Kind || len(old.Stack) != len(s.Stack) || old.Stack[1].Symbol != s.Stack[1].Symbol) {
			t.Errorf("site %d changed between Finish calls: %+v -> %+v", s.ID, old, s)
		}
	}
	i2 := iv.Next(r2, start.Add(3500*time.Millisecond))
	if i2.Seq != 2 || i2.IntervalSeconds != 2.5 || i2.LostEvents != 3 || i2.Schema != IntervalSchema {
		t.Errorf("second interval header = %+v", i2)
	}
	wantProcs := []IntervalProcess{
		{PID: 1, Comm: "comm", Allocations: 5, AllocatedBytes: 1165, Frees: 2, OutstandingCount: 3, OutstandingBytes: 65,
			DeltaAllocations: 3, DeltaBytes: 1055, DeltaFrees: 2},
		{PID: 2, Comm: "comm", Allocations: 1, AllocatedBytes: 7, OutstandingCount: 1, OutstandingBytes: 7},
		{PID: 2, Comm: "comm", Allocations: 1, AllocatedBytes: 3, OutstandingCount: 1, OutstandingBytes: 3, DeltaAllocations: 1, DeltaBytes: 3},
		{PID: 3, Comm: "comm", Allocations: 1, AllocatedBytes: 1, OutstandingCount: 1, OutstandingBytes: 1, DeltaAllocations: 1, DeltaBytes: 1},
	}
	if !equal(i2.Processes, wantProcs) {
		t.Errorf("processes:\n got %+v\nwant %+v", i2.Processes, wantProcs)
	}
	// Top 2 by delta_bytes: helper (+1005) and fgetc (+50); main and the reused pid's sites are smaller, idle ones absent.
	wantSites := []IntervalSite{
		{ID: 2, PID: 1, Kind: "malloc", Count: 3, Bytes: 1015, OutstandingBytes: 15, DeltaCount: 2, DeltaBytes: 1005, Top: "helper"},
		{ID: 4, PID: 1, Kind: "malloc", Count: 1, Bytes: 50, OutstandingBytes: 50, DeltaCount: 1, DeltaBytes: 50, Top: "_IO_file_doallocate"},
	}
	if !equal(i2.TopSites, wantSites) {
		t.Errorf("top sites:\n got %+v\nwant %+v", i2.TopSites, wantSites)
	}

	// Nothing happened: no site is news, process deltas are 0.
	i3 := NewIntervals(0)
	i3.Next(r2, start.Add(4*time.Second))
	quiet := i3.Next(b.Finish(&fakeSym{}, meta), start.Add(5*time.Second))
	if len(quiet.TopSites) != 0 || quiet.Processes[0].DeltaAllocations != 0 || quiet.IntervalSeconds != 1 {
		t.Errorf("quiet interval = %+v", quiet)
	}
}

func TestIntervalWriteTo(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, al(1, 1, event.Malloc, 100, 0x10, stk(fMalloc, fr(exePath, 0x9999))))
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	var buf bytes.Buffer
	iv := NewIntervals(5)
	for range 2 {
		n, err := iv.Next(b.Finish(nil, Meta{}), at).WriteTo(&buf)
		if err != nil || n == 0 {
			t.Fatal(n, err)
		}
	}
	lines := strings.SplitAfter(buf.String(), "\n")
	if len(lines) != 3 || lines[2] != "" {
		t.Fatalf("want 2 NDJSON lines, got %q", buf.String())
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &doc); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		keys []any
		want any
	}{
		{[]any{"schema"}, "udstrace.interval/v1"},
		{[]any{"seq"}, 1.0},
		{[]any{"time"}, "2026-01-02T03:04:05.123456789Z"},
		{[]any{"interval_seconds"}, 0.0},
		{[]any{"lost_events"}, 0.0},
		{[]any{"processes", 0, "delta_allocations"}, 1.0},
		{[]any{"processes", 0, "outstanding_bytes"}, 100.0},
		{[]any{"top_sites", 0, "delta_bytes"}, 100.0},
		{[]any{"top_sites", 0, "top"}, "echo-client+0x9999"},
	} {
		if got := jsonAt(t, doc, c.keys...); got != c.want {
			t.Errorf("%v = %#v, want %#v", c.keys, got, c.want)
		}
	}
	if !strings.Contains(lines[1], `"top_sites":[]`) {
		t.Errorf("second line: idle sites should leave an empty list: %s", lines[1])
	}
}

func TestFinishRepeatable(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	allocs, socks := echoRun()
	feed(t, b, allocs...)
	feed(t, b, socks...)
	var a, c bytes.Buffer
	if err := b.Finish(&fakeSym{}, Meta{Roles: echoRoles}).WriteJSON(&a); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(&fakeSym{}, Meta{Roles: echoRoles}).WriteJSON(&c); err != nil {
		t.Fatal(err)
	}
	if a.String() != c.String() {
		t.Error("a second Finish with no new events changed the report")
	}
}

// TestSnapshotStacksOnDemand: a Snapshot has Finish's figures but no stacks until SiteStack asks
// (the symbolizer is not called for the sites nobody shows), and then the same stacks; its
// intervals name their top sites as Finish's do.
func TestSnapshotStacksOnDemand(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b,
		al(1, 1, event.Malloc, 100, 0x10, stMain),
		al(2, 1, event.Malloc, 10, 0x20, stHelper),
		al(3, 2, event.Malloc, 7, 0x10, stFdopen),
	)
	full := b.Finish(&fakeSym{}, Meta{})
	calls := 0
	counting := symFunc(func(f event.Frame) []SymFrame { calls++; return (&fakeSym{}).Symbolize(f) })
	snap := b.Snapshot(counting, Meta{})
	if calls != 0 {
		t.Errorf("Snapshot symbolized %d frames before any was asked for", calls)
	}
	if len(snap.Sites) != len(full.Sites) {
		t.Fatalf("%d sites, Finish has %d", len(snap.Sites), len(full.Sites))
	}
	for i := range snap.Sites {
		s, f := &snap.Sites[i], &full.Sites[i]
		if s.ID != f.ID || s.Bytes != f.Bytes || s.Count != f.Count || s.OutstandingBytes != f.OutstandingBytes || s.Stack != nil {
			t.Errorf("snapshot site %+v, Finish %+v", *s, *f)
		}
	}
	st := snap.SiteStack(&snap.Sites[0])
	if len(st) != len(full.Sites[0].Stack) || st[1].Symbol != full.Sites[0].Stack[1].Symbol {
		t.Errorf("SiteStack %+v, Finish %+v", st, full.Sites[0].Stack)
	}
	if n := calls; n == 0 || n > len(st) {
		t.Errorf("SiteStack of one site symbolized %d frames for its %d", n, len(st))
	}
	i1, i2 := NewIntervals(1).Next(snap, time.Now()), NewIntervals(1).Next(full, time.Now())
	if i1.TopSites[0].Top != i2.TopSites[0].Top || i1.TopSites[0].Top == "" {
		t.Errorf("snapshot interval top %q, Finish's %q", i1.TopSites[0].Top, i2.TopSites[0].Top)
	}
}
