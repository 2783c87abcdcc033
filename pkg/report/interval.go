package report

import (
	"bytes"
	"cmp"
	"encoding/json"
	"io"
	"slices"
	"time"
)

// IntervalSchema names the NDJSON interval line layout (schema.md).
const IntervalSchema = "udstrace.interval/v1"

// Interval is one NDJSON line of a live trace: totals so far and what changed since the previous line.
type Interval struct {
	Schema          string            `json:"schema"`
	Seq             uint64            `json:"seq"`
	Time            time.Time         `json:"time"` // encodes as RFC 3339 with nanoseconds
	IntervalSeconds float64           `json:"interval_seconds"`
	LostEvents      uint64            `json:"lost_events"`
	Processes       []IntervalProcess `json:"processes"`
	TopSites        []IntervalSite    `json:"top_sites"`
}

// IntervalProcess is one process's running totals and deltas.
type IntervalProcess struct {
	PID              uint32 `json:"pid"`
	Comm             string `json:"comm"`
	Allocations      uint64 `json:"allocations"`
	AllocatedBytes   uint64 `json:"allocated_bytes"`
	Frees            uint64 `json:"frees"`
	OutstandingCount uint64 `json:"outstanding_count"`
	OutstandingBytes uint64 `json:"outstanding_bytes"`
	DeltaAllocations uint64 `json:"delta_allocations"`
	DeltaBytes       uint64 `json:"delta_bytes"`
	DeltaFrees       uint64 `json:"delta_frees"`
}

// IntervalSite is one of the sites that allocated the most during the interval.
type IntervalSite struct {
	ID               int    `json:"id"`
	PID              uint32 `json:"pid"`
	Kind             string `json:"kind"`
	Count            uint64 `json:"count"`
	Bytes            uint64 `json:"bytes"`
	OutstandingBytes uint64 `json:"outstanding_bytes"`
	DeltaCount       uint64 `json:"delta_count"`
	DeltaBytes       uint64 `json:"delta_bytes"`
	Top              string `json:"top"` // first frame outside the allocator
}

// Intervals turns successive reports of one Builder into Interval lines; not safe for concurrent use.
type Intervals struct {
	topN  int
	seq   uint64
	last  time.Time
	procs map[procKey][3]uint64 // allocations, bytes, frees
	sites map[int][2]uint64     // site id -> count, bytes
}

// procKey tells a reused pid's incarnations apart: the report lists them in creation order.
type procKey struct {
	pid uint32
	nth int
}

// NewIntervals reports the topN sites by delta_bytes in each interval (10 when topN <= 0).
func NewIntervals(topN int) *Intervals {
	if topN <= 0 {
		topN = 10
	}
	return &Intervals{topN: topN, procs: map[procKey][3]uint64{}, sites: map[int][2]uint64{}}
}

// Next computes the interval ending at now from r, a later Finish of the Builder behind the previous call.
func (iv *Intervals) Next(r *Report, now time.Time) Interval {
	iv.seq++
	out := Interval{Schema: IntervalSchema, Seq: iv.seq, Time: now, LostEvents: r.LostEvents,
		Processes: make([]IntervalProcess, 0, len(r.Processes)), TopSites: []IntervalSite{}}
	since := iv.last
	if since.IsZero() {
		since = r.Start // the first interval runs from the start of the trace
	}
	if !since.IsZero() && now.After(since) {
		out.IntervalSeconds = now.Sub(since).Seconds()
	}
	iv.last = now

	nth := map[uint32]int{}
	procs := make(map[procKey][3]uint64, len(r.Processes))
	for _, p := range r.Processes {
		k := procKey{p.PID, nth[p.PID]}
		nth[p.PID]++
		prev := iv.procs[k]
		procs[k] = [3]uint64{p.Allocations, p.AllocatedBytes, p.Frees}
		out.Processes = append(out.Processes, IntervalProcess{
			PID: p.PID, Comm: p.Comm, Allocations: p.Allocations, AllocatedBytes: p.AllocatedBytes, Frees: p.Frees,
			OutstandingCount: p.OutstandingCount, OutstandingBytes: p.OutstandingBytes,
			DeltaAllocations: delta(p.Allocations, prev[0]), DeltaBytes: delta(p.AllocatedBytes, prev[1]),
			DeltaFrees: delta(p.Frees, prev[2]),
		})
	}
	iv.procs = procs

	shown := r.ShownSites()
	sites := make(map[int][2]uint64, len(shown))
	for i := range shown {
		s := &shown[i]
		prev := iv.sites[s.ID]
		sites[s.ID] = [2]uint64{s.Count, s.Bytes}
		dc, db := delta(s.Count, prev[0]), delta(s.Bytes, prev[1])
		if dc == 0 && db == 0 {
			continue // an idle site is not news
		}
		out.TopSites = append(out.TopSites, IntervalSite{ID: s.ID, PID: s.PID, Kind: s.Kind, Count: s.Count,
			Bytes: s.Bytes, OutstandingBytes: s.OutstandingBytes, DeltaCount: dc, DeltaBytes: db})
	}
	iv.sites = sites
	slices.SortFunc(out.TopSites, func(a, b IntervalSite) int {
		return cmp.Or(cmp.Compare(b.DeltaBytes, a.DeltaBytes), cmp.Compare(b.DeltaCount, a.DeltaCount), cmp.Compare(a.ID, b.ID))
	})
	out.TopSites = out.TopSites[:min(len(out.TopSites), iv.topN)]
	byID := make(map[int]*Site, len(out.TopSites))
	for i := range shown {
		byID[shown[i].ID] = &shown[i]
	}
	for i := range out.TopSites {
		out.TopSites[i].Top, _, _ = source(r.SiteStack(byID[out.TopSites[i].ID])) // only the kept sites pay for naming
	}
	return out
}

// WriteTo writes the interval as one compact JSON line (NDJSON).
func (i Interval) WriteTo(w io.Writer) (int64, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(i); err != nil { // Encode ends the line with "\n"
		return 0, err
	}
	n, err := w.Write(buf.Bytes())
	return int64(n), err
}

// delta is cur-prev for running totals; a total that went down is from another Builder, so all of it is new.
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}
