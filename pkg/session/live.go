// Live snapshots: a report of everything so far, every interval, for ndjson, top and the live views.

package session

import (
	"context"
	"time"

	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
)

// snapshots hands a report of everything so far to OnInterval, every Interval, until the trace ends.
func (s *Session) snapshots(ctx context.Context) {
	tick := time.NewTicker(s.opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.opts.OnInterval(s.snapshot())
		}
	}
}

func (s *Session) snapshot() *report.Report {
	s.mu.Lock()
	meta := s.meta
	meta.End = time.Now()
	lost, err1 := s.tracer.Lost()
	stk, err2 := s.tracer.StackStats()
	if err1 == nil && err2 == nil {
		meta.Lost, meta.Stacks = s.lostMeta(lost, stk)
	}
	meta.Kernel = s.kernelMeta()
	meta.Tracer = s.selfCost()
	s.mu.Unlock()
	var live []loader.Total
	if s.opts.SampleBytes > 0 {
		live, _ = s.tracer.Totals() // running processes' exact totals are still in the kernel
	}
	s.bmu.Lock()
	defer s.bmu.Unlock()
	meta.End = time.Now() // the figures are those of this moment
	// Stacks are symbolized later, for the few sites a view shows, without the builder's lock
	// the event reader needs.
	rep := s.builder.Snapshot(&symbolizer{maps: s.maps}, meta)
	addLiveTotals(rep, live)
	s.labelContainers(rep, true)
	return rep
}
