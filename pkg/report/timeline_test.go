package report

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

const ms = uint64(1e6)

func timelineOf(t *testing.T, r *Report, pid uint32) (Timeline, Peak) {
	t.Helper()
	var tl Timeline
	var pk Peak
	found := false
	for _, x := range r.Timeline {
		if x.PID == pid {
			tl, found = x, true
		}
	}
	for _, x := range r.Peak {
		if x.PID == pid {
			pk = x
		}
	}
	if !found {
		t.Fatalf("no timeline of pid %d in %+v", pid, r.Timeline)
	}
	return tl, pk
}

// siteID is the id of pid's site of kind called from via, not a file mapping's.
func siteID(t *testing.T, r *Report, pid uint32, kind, via string) int {
	t.Helper()
	for _, s := range r.Sites {
		if s.PID == pid && s.Kind == kind && !s.FileBacked && len(s.Stack) > 1 && s.Stack[1].Function == via {
			return s.ID
		}
	}
	t.Fatalf("no %s site of pid %d via %s", kind, pid, via)
	return 0
}

// highest is the series' highest point, heap and mapped bytes together.
func highest(tl Timeline) (at int, bytes uint64) {
	for i := range tl.HeapBytes {
		if v := tl.HeapBytes[i] + tl.MmapBytes[i]; v > bytes {
			at, bytes = i, v
		}
	}
	return at, bytes
}

// TestPeakSnapshot: a known sequence of allocations and frees peaks at 4,296 bytes when the mmap
// comes, holding the helper's 200-byte block and the 4 KiB region; what was freed before and
// allocated after is not in the snapshot, and a file mapping is not memory in use.
func TestPeakSnapshot(t *testing.T) {
	r := build(t, Meta{},
		al(1*ms, 1, event.Malloc, 100, 0x10, stMain),
		al(2*ms, 1, event.Malloc, 200, 0x20, stHelper),
		al(3*ms, 1, event.Free, 0, 0x10, stMain),
		fileMap(al(3*ms+1, 1, event.Mmap, 1<<20, 0x9000000, stMmap)),
		al(4*ms, 1, event.Mmap, 4096, 0x7000, stMmap),
		al(5*ms, 1, event.Free, 0, 0x20, stHelper),
		al(6*ms, 1, event.Malloc, 50, 0x30, stMain),
		al(6*ms, 1, event.Malloc, 60, 0x40, stFdopen),
	)
	tl, pk := timelineOf(t, r, 1)
	want := Peak{PID: 1, Comm: "comm", Process: 0, Time: 4 * ms, Bytes: 4296, HeapBytes: 200, MmapBytes: 4096,
		Sites: []PeakSite{{siteID(t, r, 1, "mmap", "main"), 1, 4096}, {siteID(t, r, 1, "malloc", "helper"), 1, 200}}}
	if !reflect.DeepEqual(pk, want) {
		t.Errorf("peak %+v, want %+v", pk, want)
	}
	if at, v := highest(tl); v != pk.Bytes || tl.Start+uint64(at)*tl.StepNs > pk.Time || pk.Time >= tl.Start+uint64(at+1)*tl.StepNs {
		t.Errorf("timeline's highest point %d B at step %d (start %d, step %d), want the peak %d B at %d", v, at, tl.Start, tl.StepNs, pk.Bytes, pk.Time)
	}
	if tl.Start != 1*ms || tl.StepNs != firstStep || len(tl.HeapBytes) != int(5*ms/firstStep)+1 {
		t.Errorf("timeline starts %d, step %d, %d points; want 1ms, %d, %d", tl.Start, tl.StepNs, len(tl.HeapBytes), firstStep, 5*ms/firstStep+1)
	}
	last := len(tl.HeapBytes) - 1
	if tl.HeapBytes[last] != 110 || tl.MmapBytes[last] != 4096 || tl.HeapBytes[0] != 100 {
		t.Errorf("first point heap %d, last heap %d mmap %d; want 100, 110 and 4096", tl.HeapBytes[0], tl.HeapBytes[last], tl.MmapBytes[last])
	}
}

// TestPeakMatchesReplay: random allocations and frees over several sites; the peak and its
// snapshot are what a replay that copies every site's holdings at each new high finds.
func TestPeakMatchesReplay(t *testing.T) {
	stacks := [][]event.Frame{stMain, stHelper, stFdopen, stFgetc, stMmap}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		b := NewBuilder(testOpts(Options{}))
		type blk struct {
			st   int
			size uint64
		}
		live := map[uint64]blk{}
		held := make([]uint64, len(stacks))
		var best uint64
		var snap []uint64
		var at uint64
		addr := uint64(0x1000)
		for i := range 3000 {
			tm := uint64(i+1) * 37_000
			if len(live) > 0 && rng.IntN(3) == 0 {
				var a uint64
				for a = range live {
					break
				}
				x := live[a]
				delete(live, a)
				held[x.st] -= x.size
				k := event.Free
				if x.st == 4 {
					k = event.Munmap
				}
				b.Alloc(al(tm, 7, k, x.size, a, stacks[x.st]))
			} else {
				st := rng.IntN(len(stacks))
				size := uint64(rng.IntN(5000) + 1)
				k := event.Malloc
				if st == 4 {
					k, size = event.Mmap, size*4096
				}
				addr += 1 << 24
				live[addr] = blk{st, size}
				held[st] += size
				b.Alloc(al(tm, 7, k, size, addr, stacks[st]))
			}
			var total uint64
			for _, h := range held {
				total += h
			}
			if total > best {
				best, snap, at = total, slices.Clone(held), tm
			}
		}
		r := b.Finish(&fakeSym{}, Meta{})
		tl, pk := timelineOf(t, r, 7)
		if pk.Bytes != best || pk.Time != at {
			t.Fatalf("seed %d: peak %d B at %d, replay %d B at %d", seed, pk.Bytes, pk.Time, best, at)
		}
		if _, v := highest(tl); v != best {
			t.Errorf("seed %d: timeline's highest point %d, peak %d", seed, v, best)
		}
		got := map[int]uint64{}
		for _, ps := range pk.Sites {
			got[ps.Site] = ps.Bytes
		}
		vias := []string{"main", "helper", "_IO_new_fdopen", "_IO_file_doallocate", "main"}
		for i, via := range vias {
			kind := "malloc"
			if i == 4 {
				kind = "mmap"
			}
			if id := siteID(t, r, 7, kind, via); got[id] != snap[i] {
				t.Errorf("seed %d: %s site via %s held %d at the peak, replay %d", seed, kind, via, got[id], snap[i])
			}
		}
		if len(tl.HeapBytes) > maxPoints {
			t.Errorf("seed %d: %d points, more than %d", seed, len(tl.HeapBytes), maxPoints)
		}
	}
}

// leakCacheChurn: over 100 s, main leaks 64 bytes every 10 ms, helper fills a cache of 100
// blocks in the first 100 ms and keeps it, fdopen's site allocates and frees 4 KiB every ms.
func leakCacheChurn(b *Builder, pid uint32) {
	addr := uint64(0x10000)
	next := func() uint64 { addr += 0x100; return addr }
	for i := range uint64(100) {
		b.Alloc(al(i*ms+1, pid, event.Malloc, 1000, next(), stHelper))
	}
	for i := range uint64(100_000) {
		tm := i*ms + 500
		if i%10 == 0 {
			b.Alloc(al(tm, pid, event.Malloc, 64, next(), stMain))
		}
		a := next()
		b.Alloc(al(tm+1, pid, event.Malloc, 4096, a, stFdopen))
		b.Alloc(al(tm+2, pid, event.Free, 0, a, stFdopen))
	}
}

// TestTimelineBoundedAndTrends: 100 s of a leak, a cache and churn end in at most 1,000 points
// (coarsened from 10 µs steps to 200 ms ones), 50 per site, covering the whole trace; the leak
// is growing, the cache flat, the churn transient, and the peak is the end (the leak never stops).
func TestTimelineBoundedAndTrends(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	leakCacheChurn(b, 3)
	for _, s := range b.order {
		if len(s.mem.vals) > sitePoints {
			t.Errorf("site %d keeps %d values, more than %d", s.id, len(s.mem.vals), sitePoints)
		}
	}
	r := b.Finish(&fakeSym{}, Meta{})
	tl, pk := timelineOf(t, r, 3)
	lastEvent := 99_999*ms + 502
	if n := len(tl.HeapBytes); n > maxPoints || n < maxPoints/2 || tl.Start+uint64(n)*tl.StepNs <= lastEvent || tl.Start+uint64(n-1)*tl.StepNs > lastEvent {
		t.Errorf("%d points of %d ns from %d: want 500 to 1000 ending with the last event at %d", n, tl.StepNs, tl.Start, lastEvent)
	}
	leak, cache, churn := siteID(t, r, 3, "malloc", "main"), siteID(t, r, 3, "malloc", "helper"), siteID(t, r, 3, "malloc", "_IO_new_fdopen")
	trends := map[int]SiteSeries{}
	for _, ss := range tl.Sites {
		if len(ss.Bytes) > sitePoints || len(ss.Bytes) != (len(tl.HeapBytes)+siteEvery-1)/siteEvery {
			t.Errorf("site %d: %d values for %d points", ss.Site, len(ss.Bytes), len(tl.HeapBytes))
		}
		trends[ss.Site] = ss
	}
	if got := trends[leak]; got.Trend != "growing" || got.Bytes[len(got.Bytes)-1] != 10_000*64 || got.GrowthBytes <= 9_000*64 {
		t.Errorf("leak: %+v, want growing to 640000 bytes", got)
	}
	if got := trends[cache]; got.Trend != "flat" || got.Bytes[len(got.Bytes)-1] != 100_000 || got.GrowthBytes != 0 {
		t.Errorf("cache: %+v, want flat at 100000 bytes", got)
	}
	if got := trends[churn]; got.Trend != "transient" {
		t.Errorf("churn: %+v, want transient", got)
	}
	if want := uint64(100_000 + 10_000*64 + 4096); pk.Bytes != want || pk.Time != 99_990*ms+501 {
		t.Errorf("peak %d B at %d, want %d B at the last leak's churn block", pk.Bytes, pk.Time, want)
	}
}

// TestTimelineJSON: the timeline and the peak are in the JSON document and read back whole;
// live snapshots carry none (they are not drawn).
func TestTimelineJSON(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	leakCacheChurn(b, 3)
	r := b.Finish(&fakeSym{}, Meta{})
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Timeline []Timeline `json:"timeline"`
		Peak     []Peak     `json:"peak"`
	}
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Timeline, r.Timeline) || !reflect.DeepEqual(back.Peak, r.Peak) || len(back.Peak) != 1 {
		t.Errorf("JSON timeline/peak differ from the report's")
	}
	if s := b.Snapshot(&fakeSym{}, Meta{}); len(s.Timeline) != 0 || len(s.Peak) != 0 {
		t.Errorf("snapshot has %d timelines, %d peaks", len(s.Timeline), len(s.Peak))
	}
}

// TestPeakFoldedSites: with --max-sites the peak names the folded entry of a cold site.
func TestPeakFoldedSites(t *testing.T) {
	b := NewBuilder(testOpts(Options{MaxSites: 2}))
	feed(t, b,
		al(1*ms, 1, event.Malloc, 1000, 0x10, stMain),
		al(2*ms, 1, event.Malloc, 10, 0x20, stHelper),
		al(3*ms, 1, event.Malloc, 20, 0x30, stFdopen),
		al(4*ms, 1, event.Malloc, 30, 0x40, stFgetc),
	)
	r := b.Finish(&fakeSym{}, Meta{})
	ids := map[int]Site{}
	for _, s := range r.Sites {
		ids[s.ID] = s
	}
	_, pk := timelineOf(t, r, 1)
	var sum uint64
	for _, ps := range pk.Sites {
		s, ok := ids[ps.Site]
		if !ok || s.OutstandingBytes != ps.Bytes {
			t.Errorf("peak site %+v: report site %+v", ps, s)
		}
		sum += ps.Bytes
	}
	if sum != 1060 || pk.Bytes != 1060 || len(pk.Sites) != 2 {
		t.Errorf("peak %+v, want 1060 bytes at 2 sites (one folded)", pk)
	}
}

// TestTimelineRandomEvents: over random event sequences (FuzzBuilder's: forks, execs, exits,
// realloc, mmap, munmap, mremap, file mappings), every process's peak is its series' highest
// point, its sites' holdings then add up to it, it is at least what the process holds at the
// end, and the series stay within their bounds.
func TestTimelineRandomEvents(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 3))
	checked, coarse := 0, 0
	for round := range 3000 {
		data := make([]byte, 6*(1+rng.IntN(200)))
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		evs, _ := decodeEvents(data)
		scale := []uint64{1, 1e5, 1e8}[round%3] // up to 3 ns, 0.3 ms or 0.3 s between events: coarsened series too
		for _, e := range evs {
			switch e := e.(type) {
			case *event.Alloc:
				e.Time *= scale
			case *event.Proc:
				e.Time *= scale
			}
		}
		b := NewBuilder(testOpts(Options{}))
		feed(t, b, evs...)
		r := b.Finish(&fakeSym{}, Meta{})
		peaks := map[int]Peak{}
		for _, pk := range r.Peak {
			var sum uint64
			for _, ps := range pk.Sites {
				sum += ps.Bytes
			}
			if sum != pk.Bytes || pk.HeapBytes+pk.MmapBytes != pk.Bytes {
				t.Fatalf("round %d (%x): peak %+v: sites add up to %d", round, data, pk, sum)
			}
			peaks[pk.Process] = pk
			checked++
		}
		for _, tl := range r.Timeline {
			if tl.StepNs > firstStep {
				coarse++
			}
			_, high := highest(tl)
			pk := peaks[tl.Process]
			out := r.Processes[tl.Process].OutstandingBytes
			if high != pk.Bytes || out > pk.Bytes || len(tl.HeapBytes) > maxPoints || len(tl.HeapBytes) != len(tl.MmapBytes) {
				t.Fatalf("round %d (%x): pid %d: highest point %d, peak %d, outstanding at the end %d, %d points", round, data, tl.PID, high, pk.Bytes, out, len(tl.HeapBytes))
			}
			for _, ss := range tl.Sites {
				if len(ss.Bytes) > sitePoints {
					t.Fatalf("round %d: site %d: %d values", round, ss.Site, len(ss.Bytes))
				}
			}
		}
	}
	if checked < 3000 || coarse < 500 {
		t.Errorf("only %d peaks, %d coarsened timelines in 3000 rounds", checked, coarse)
	}
}
