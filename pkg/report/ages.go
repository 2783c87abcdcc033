package report

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"
)

// retire keeps p's counted blocks for ageing once its image is gone, and drops its address maps.
func (b *Builder) retire(p *proc) {
	if p.leave() {
		return // others still run in its address space: its blocks live on there
	}
	minAge := uint64(max(b.opts.MinAge, 0))
	for _, m := range []map[uint64]block{p.live, p.regions} {
		for _, blk := range m {
			if blk.s == nil {
				continue // inherited blocks are outstanding in the parent only
			}
			s := blk.s
			if !s.retAny || blk.t < s.retOldest {
				s.retOldest, s.retAny = blk.t, true
			}
			if age(b.latest, blk.t) >= minAge {
				s.retOlder.Count += blk.count()
				s.retOlder.Bytes += blk.size
			} else {
				b.pending = append(b.pending, blk)
			}
		}
	}
	p.retireFiles()
	p.live, p.regions = nil, nil
	b.promote(minAge)
}

// promote counts pending blocks that have reached MinAge on their sites, so pending stays small.
func (b *Builder) promote(minAge uint64) {
	n := 0
	for n < len(b.pending) && age(b.latest, b.pending[n].t) >= minAge {
		blk := b.pending[n]
		blk.s.retOlder.Count += blk.count()
		blk.s.retOlder.Bytes += blk.size
		n++
	}
	if n > 0 {
		b.pending = append(b.pending[:0], b.pending[n:]...)
	}
}

// siteAges is what Finish reports about one site's live blocks.
type siteAges struct {
	oldest uint64 // allocation time of the oldest live block
	any    bool
	older  BlockCount // blocks at least MinAge old
}

// ages scans every live block once, indexed by site pos; blocks are aged at now.
func (b *Builder) ages(now uint64) []siteAges {
	out := make([]siteAges, len(b.order))
	minAge := uint64(max(b.opts.MinAge, 0))
	oldest := func(a *siteAges, t uint64) {
		if !a.any || t < a.oldest {
			a.oldest, a.any = t, true
		}
	}
	add := func(blk block) {
		if blk.s == nil {
			return
		}
		a := &out[blk.s.pos]
		oldest(a, blk.t)
		if age(now, blk.t) >= minAge {
			a.older.Count += blk.count()
			a.older.Bytes += blk.size
		}
	}
	scanned := map[*space]bool{}
	for _, p := range b.procs {
		if p.space != nil {
			if scanned[p.space] {
				continue // a shared address space is scanned once
			}
			scanned[p.space] = true
		}
		for _, blk := range p.live {
			add(blk)
		}
		for _, blk := range p.regions {
			add(blk)
		}
	}
	for _, blk := range b.pending {
		add(blk)
	}
	for _, s := range b.order {
		if s.retAny {
			a := &out[s.pos]
			oldest(a, s.retOldest)
			a.older.Count += s.retOlder.Count
			a.older.Bytes += s.retOlder.Bytes
		}
	}
	return out
}

// age clamps to 0: a caller's Now may be earlier than the latest event.
func age(now, t uint64) uint64 {
	if t > now {
		return 0
	}
	return now - t
}

// ageText rounds an age in seconds for people: 12.345s, 1.5ms, 2m3.5s.
func ageText(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d >= time.Second:
		d = d.Round(time.Millisecond)
	case d >= time.Millisecond:
		d = d.Round(time.Microsecond)
	}
	return d.String()
}

// longLived lists the sites holding blocks older than the report's min age: a leak keeps them, a cache frees them.
func (r *Report) longLived(b *bytes.Buffer) {
	if r.MinAgeSeconds <= 0 {
		return
	}
	var sites []Site
	var total BlockCount
	for _, s := range r.ShownSites() {
		if o := s.OutstandingOlderThanMinAge; o.Count > 0 {
			sites = append(sites, s)
			total.Count += o.Count
			total.Bytes += o.Bytes
		}
	}
	slices.SortStableFunc(sites, func(a, b Site) int {
		x, y := a.OutstandingOlderThanMinAge, b.OutstandingOlderThanMinAge
		return cmp.Or(cmp.Compare(y.Bytes, x.Bytes), cmp.Compare(y.Count, x.Count), cmp.Compare(a.ID, b.ID))
	})
	fmt.Fprintf(b, "\nLONG-LIVED (older than %s): %s at %s (%s)\n", ageText(r.MinAgeSeconds),
		plural(total.Count, "block"), plural(uint64(len(sites)), "site"), bytesText(total.Bytes))
	n := len(sites)
	if r.topSites > 0 {
		n = min(n, r.topSites)
	}
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	for _, s := range sites[:n] {
		o := s.OutstandingOlderThanMinAge
		fn, _, _ := source(s.Stack)
		fmt.Fprintf(tw, "  #%d\t%s\tpid %s %s\t%s\t%s\tof %s outstanding\toldest %s\t%s\n", s.ID, s.Kind, pidText(s.PID),
			cmpOr(esc(s.Comm), "?"), plural(o.Count, "block"), bytesText(o.Bytes), commas(s.OutstandingCount),
			ageText(s.OldestOutstandingAgeSeconds), esc(fn))
	}
	tw.Flush()
	if n < len(sites) {
		fmt.Fprintf(b, "  ... %d more sites\n", len(sites)-n)
	}
}
