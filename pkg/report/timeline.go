package report

import "github.com/udstrace/udstrace/pkg/event"

// Memory over time: each process's heap and anonymous mapped bytes in use, at a bounded
// resolution, and the sites' held bytes at a coarser one, recorded as blocks come and go; and
// the peak, with every site's held blocks at that moment (massif's peak snapshot). The series
// start at a process's first block, in steps of firstStep; once maxPoints steps do not cover
// the process's life, adjacent steps are merged and the step doubles, so that a process costs at
// most maxPoints points and each of its sites at most sitePoints, however long the trace.

const (
	maxPoints  = 1000 // steps per process series
	siteEvery  = 20   // process steps per site step
	sitePoints = maxPoints / siteEvery
	firstStep  = 10_000 // ns: 1,000 steps cover the first 10 ms
)

// memPoint is one step of a process: heap and mapped bytes at the step's highest moment (their
// sum the highest), and at its end.
type memPoint struct {
	heap, mmap         uint64
	lastHeap, lastMmap uint64
}

// memTrack is one process's timeline and peak.
type memTrack struct {
	clock      *uint64 // the Builder's latest event time: steps move forward only
	start      uint64  // time of the first block
	step       uint64  // ns per point (0: nothing recorded yet)
	pts        []memPoint
	heap, mmap uint64 // in use now
	peak       memPeak
	epoch      uint64  // bumped at each new peak: sites save their peak figures when they first change after it
	sites      []*site // sites with a series, for coarsening
}

// memPeak is the moment a process held the most (heap and mapped bytes together).
type memPeak struct {
	t          uint64
	heap, mmap uint64
}

// siteMem is one site's series and, once it changed after the latest peak, its figures at it.
type siteMem struct {
	vals      []uint64 // held bytes at the end of each site step (the process's step × siteEvery)
	epoch     uint64   // the process's epoch when peakCount and peakBytes were saved
	peakCount uint64
	peakBytes uint64
}

// mapKind reports whether a site's blocks are mapped regions rather than heap blocks.
func mapKind(k event.Kind) bool { return k == event.Mmap || k == event.Mremap }

// record notes that s's outstanding blocks just changed by n blocks and bytes (two's complement
// for a decrease); s.outCount and s.outBytes already hold the new figures.
func (m *memTrack) record(s *site, n, bytes uint64) {
	if m == nil || s.file || bytes == 0 && n == 0 {
		return
	}
	t := *m.clock
	if m.step == 0 {
		m.start, m.step = t, firstStep
	}
	if s.mem.epoch != m.epoch { // first change since the peak: keep what it held then
		s.mem.epoch, s.mem.peakCount, s.mem.peakBytes = m.epoch, s.outCount-n, s.outBytes-bytes
	}
	if mapKind(s.kind) {
		m.mmap += bytes
	} else {
		m.heap += bytes
	}
	i := m.index(t)
	pt := &m.pts[i]
	pt.lastHeap, pt.lastMmap = m.heap, m.mmap
	total := m.heap + m.mmap
	if total > pt.heap+pt.mmap {
		pt.heap, pt.mmap = m.heap, m.mmap
	}
	if total > m.peak.heap+m.peak.mmap {
		m.peak = memPeak{t, m.heap, m.mmap}
		m.epoch++ // every site now holds its peak figures
	}
	if s.mem.vals == nil {
		m.sites = append(m.sites, s)
	}
	s.mem.vals = extendTo(s.mem.vals, i/siteEvery)
	s.mem.vals[i/siteEvery] = s.outBytes
}

// index is the point t falls in, coarsening the series until it has room, and extending it with
// steps that held what the one before ended with.
func (m *memTrack) index(t uint64) int {
	for (t-m.start)/m.step >= maxPoints {
		m.coarsen()
	}
	i := int((t - m.start) / m.step)
	for len(m.pts) <= i {
		var last memPoint
		if n := len(m.pts); n > 0 {
			l := m.pts[n-1]
			last = memPoint{l.lastHeap, l.lastMmap, l.lastHeap, l.lastMmap}
		}
		m.pts = append(m.pts, last)
	}
	return i
}

// coarsen merges adjacent steps, doubling the step, in the process's series and its sites'.
func (m *memTrack) coarsen() {
	out := m.pts[:0]
	for i := 0; i < len(m.pts); i += 2 {
		p := m.pts[i]
		if i+1 < len(m.pts) {
			q := m.pts[i+1]
			if q.heap+q.mmap > p.heap+p.mmap {
				p.heap, p.mmap = q.heap, q.mmap
			}
			p.lastHeap, p.lastMmap = q.lastHeap, q.lastMmap
		}
		out = append(out, p)
	}
	m.pts = out
	m.step *= 2
	for _, s := range m.sites {
		v := s.mem.vals
		w := v[:0]
		for i := 0; i < len(v); i += 2 {
			w = append(w, v[min(i+1, len(v)-1)]) // the value at the merged step's end
		}
		s.mem.vals = w
	}
}

// extendTo makes v long enough to hold index i, carrying its last value forward.
func extendTo(v []uint64, i int) []uint64 {
	for len(v) <= i {
		var last uint64
		if n := len(v); n > 0 {
			last = v[n-1]
		}
		if v == nil {
			v = make([]uint64, 0, 4)
		}
		v = append(v, last)
	}
	return v
}

// atPeak is what s held at its process's peak.
func (m *memTrack) atPeak(s *site) (count, bytes uint64) {
	if s.mem.epoch == m.epoch {
		return s.mem.peakCount, s.mem.peakBytes
	}
	return s.outCount, s.outBytes
}
