package report

import (
	"cmp"
	"slices"
)

// Timeline is one process's memory over time (timeline.go records it).
type Timeline struct {
	PID     uint32 `json:"pid"`
	Comm    string `json:"comm"`
	Process int    `json:"process"`    // index in processes[]
	Start   uint64 `json:"start_time"` // monotonic ns of the first point's start (the process's first block)
	StepNs  uint64 `json:"step_ns"`    // each point covers this long
	// Heap blocks' and anonymous mappings' bytes in use at each step's highest moment (the
	// highest of their sum), so the series' highest point is the process's peak.
	HeapBytes []uint64 `json:"heap_bytes"`
	MmapBytes []uint64 `json:"mmap_bytes"`
	// The sites that held the most (at the peak or at the end) or grew the most, each with the
	// bytes it held at the end of every site step (SiteStepNs, a multiple of StepNs).
	SiteStepNs uint64       `json:"site_step_ns"`
	Sites      []SiteSeries `json:"sites"`
}

// SiteSeries is one site's held bytes over time and what they did.
type SiteSeries struct {
	Site  int      `json:"site"`  // sites[].id
	Bytes []uint64 `json:"bytes"` // held at the end of each site step, to the process's last
	// Trend: "growing" (held more at the end than halfway, and more halfway than at first,
	// rising in at least half the steps: a leak's shape), "flat" (held, unchanged over the
	// second half: a cache's), "transient" (nothing held at any step's end: churn), "varying"
	// (none of these), "" (too few steps to tell).
	Trend string `json:"trend"`
	// GrowthBytes is the bytes held at the end less those held in the site's first step;
	// GrowthPerSecond spreads it over the time between.
	GrowthBytes     int64   `json:"growth_bytes"`
	GrowthPerSecond float64 `json:"growth_bytes_per_second"`
}

// Peak is the moment a process held the most heap and mapped bytes together, and what each of
// its sites held then (massif's peak snapshot).
type Peak struct {
	PID       uint32     `json:"pid"`
	Comm      string     `json:"comm"`
	Process   int        `json:"process"` // index in processes[]
	Time      uint64     `json:"time"`    // monotonic ns
	Bytes     uint64     `json:"bytes"`   // heap_bytes + mmap_bytes
	HeapBytes uint64     `json:"heap_bytes"`
	MmapBytes uint64     `json:"mmap_bytes"`
	Sites     []PeakSite `json:"sites"` // every site holding blocks then, most bytes first
}

// PeakSite is what one site held at its process's peak.
type PeakSite struct {
	Site  int    `json:"site"`
	Count uint64 `json:"count"`
	Bytes uint64 `json:"bytes"`
}

// seriesPerRank bounds the site series a process's timeline carries: this many of each ranking
// (held at the peak, held at the end, growth).
const seriesPerRank = 20

// timelines builds the timeline and peak of each reported process (procs in report order); a
// folded site is named by its folded entry.
func (b *Builder) timelines(procs []*proc, plan *foldPlan, lastID int) (tls []Timeline, peaks []Peak) {
	tls, peaks = []Timeline{}, []Peak{}
	idOf := func(s *site) int { return s.id }
	if plan != nil {
		ids := make(map[foldKey]int, len(plan.keys))
		for i, k := range plan.keys {
			ids[k] = lastID + i + 1 // as foldPlan.folded numbers them
		}
		idOf = func(s *site) int {
			if k, ok := plan.into[s]; ok {
				return ids[k]
			}
			return s.id
		}
	}
	for i, p := range procs {
		m := p.mem
		if m == nil || len(m.pts) == 0 {
			continue
		}
		tl := Timeline{PID: p.pid, Comm: p.comm, Process: i, Start: m.start, StepNs: m.step,
			HeapBytes: make([]uint64, len(m.pts)), MmapBytes: make([]uint64, len(m.pts)),
			SiteStepNs: m.step * siteEvery, Sites: []SiteSeries{}}
		for j, pt := range m.pts {
			tl.HeapBytes[j], tl.MmapBytes[j] = pt.heap, pt.mmap
		}
		n := (len(m.pts) + siteEvery - 1) / siteEvery
		series := make([]SiteSeries, 0, len(m.sites))
		var atPeak, atEnd []int
		peakBy := map[int]PeakSite{}
		pk := Peak{PID: p.pid, Comm: p.comm, Process: i, Time: m.peak.t, Bytes: m.peak.heap + m.peak.mmap,
			HeapBytes: m.peak.heap, MmapBytes: m.peak.mmap, Sites: []PeakSite{}}
		for _, s := range m.sites {
			if s.gone {
				continue
			}
			id := idOf(s)
			if c, by := m.atPeak(s); by > 0 || c > 0 {
				ps := peakBy[id]
				ps.Site, ps.Count, ps.Bytes = id, ps.Count+c, ps.Bytes+by
				peakBy[id] = ps
			}
			if id != s.id {
				continue // folded: no series of its own
			}
			ss := SiteSeries{Site: id, Bytes: extendTo(slices.Clone(s.mem.vals), n-1)}
			ss.trend(tl.SiteStepNs)
			series = append(series, ss)
		}
		for _, ps := range peakBy {
			pk.Sites = append(pk.Sites, ps)
		}
		slices.SortFunc(pk.Sites, func(a, b PeakSite) int {
			return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Site, b.Site))
		})
		if pk.Bytes > 0 {
			peaks = append(peaks, pk)
		}
		for j := range series {
			atPeak, atEnd = append(atPeak, j), append(atEnd, j)
		}
		held := func(j int) uint64 { return peakBy[series[j].Site].Bytes }
		last := func(j int) uint64 { return series[j].Bytes[len(series[j].Bytes)-1] }
		keep := map[int]bool{}
		top := func(idx []int, key func(int) int64) {
			slices.SortStableFunc(idx, func(a, b int) int {
				return cmp.Or(cmp.Compare(key(b), key(a)), cmp.Compare(series[a].Site, series[b].Site))
			})
			for _, j := range idx[:min(len(idx), seriesPerRank)] {
				if key(j) > 0 {
					keep[j] = true
				}
			}
		}
		top(atPeak, func(j int) int64 { return int64(held(j)) })
		top(atEnd, func(j int) int64 { return int64(last(j)) })
		growing := slices.Clone(atEnd)
		top(growing, func(j int) int64 { return series[j].GrowthBytes })
		for j := range series {
			if keep[j] {
				tl.Sites = append(tl.Sites, series[j])
			}
		}
		slices.SortStableFunc(tl.Sites, func(a, b SiteSeries) int {
			return cmp.Or(cmp.Compare(peakBy[b.Site].Bytes, peakBy[a.Site].Bytes), cmp.Compare(a.Site, b.Site))
		})
		tls = append(tls, tl)
	}
	return tls, peaks
}

// trend classifies the series and measures its growth (see SiteSeries); step is ns per value.
func (ss *SiteSeries) trend(step uint64) {
	v := ss.Bytes
	first := slices.IndexFunc(v, func(x uint64) bool { return x > 0 })
	if first < 0 {
		ss.Trend = "transient" // its blocks never outlived a step: churn
		return
	}
	end := v[len(v)-1]
	span := len(v) - 1 - first
	ss.GrowthBytes = int64(end) - int64(v[first])
	if span > 0 {
		ss.GrowthPerSecond = float64(ss.GrowthBytes) / (float64(span) * float64(step) / 1e9)
	}
	if span < 4 {
		return // too few steps to tell a shape
	}
	rises, falls := 0, 0
	for i := first + 1; i < len(v); i++ {
		switch {
		case v[i] > v[i-1]:
			rises++
		case v[i] < v[i-1]:
			falls++
		}
	}
	half := first + span/2
	flat := end > 0 && !slices.ContainsFunc(v[half:], func(x uint64) bool { return x != end })
	switch {
	case end > v[half] && v[half] > v[first] && 2*rises >= span && 4*falls <= rises:
		ss.Trend = "growing"
	case flat:
		ss.Trend = "flat"
	default:
		ss.Trend = "varying"
	}
}
