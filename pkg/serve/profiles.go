package serve

import (
	"bytes"
	"fmt"
	"time"

	"github.com/google/pprof/profile"

	"github.com/udstrace/udstrace/pkg/report"
)

// siteKey names a site from one snapshot to the next: its id, except for a folded entry (whose id
// is given anew in each snapshot), named by process, kind and the module its one frame names.
type siteKey struct {
	id     int
	pid    uint32
	kind   string
	module string
}

func keyOf(s *report.Site) siteKey {
	if s.FoldedSites == 0 {
		return siteKey{id: s.ID}
	}
	k := siteKey{id: -1, pid: s.PID, kind: s.Kind}
	if len(s.Stack) > 0 {
		k.module = s.Stack[0].Symbol
	}
	return k
}

// profiler cuts each snapshot into the cumulative profile and the last interval's: the interval's
// alloc_* values are what each site allocated since the previous snapshot, its inuse_* values
// what it holds now (as Go's heap profiles: in use is a state, not a flow). Only the previous
// snapshot's figures per site are kept.
type profiler struct {
	prev map[siteKey][2]uint64 // count, bytes at the previous snapshot
	last time.Time             // when the previous snapshot was taken
}

// cut returns the cumulative and the interval profile of r, whose stacks it symbolizes
// (Report.SiteStack) and whose Sites it leaves as they were.
func (pr *profiler) cut(r *report.Report) (cum, iv *profile.Profile) {
	for i := range r.Sites {
		r.SiteStack(&r.Sites[i])
	}
	containers := containersOf(r)
	cum = r.Profile()
	labelContainers(cum, containers)
	ivr := *r // the same report with each site's allocations since the previous snapshot
	ivr.Sites = make([]report.Site, len(r.Sites))
	next := make(map[siteKey][2]uint64, len(r.Sites))
	for i, s := range r.Sites {
		k := keyOf(&s)
		prev := pr.prev[k]
		next[k] = [2]uint64{s.Count, s.Bytes}
		s.Count, s.Bytes = s.Count-min(prev[0], s.Count), s.Bytes-min(prev[1], s.Bytes)
		ivr.Sites[i] = s
	}
	pr.prev = next
	if !pr.last.IsZero() {
		ivr.Start = pr.last
		ivr.DurationSeconds = r.End.Sub(pr.last).Seconds()
	}
	pr.last = r.End
	iv = ivr.Profile()
	labelContainers(iv, containers)
	return cum, iv
}

// labelContainers adds container_id and pod_uid labels to the samples of processes in containers.
func labelContainers(p *profile.Profile, containers map[uint32][2]string) {
	if len(containers) == 0 {
		return
	}
	for _, s := range p.Sample {
		pids := s.NumLabel["pid"]
		if len(pids) == 0 {
			continue
		}
		c, ok := containers[uint32(pids[0])]
		if !ok {
			continue
		}
		if c[0] != "" {
			s.Label["container_id"] = []string{c[0]}
		}
		if c[1] != "" {
			s.Label["pod_uid"] = []string{c[1]}
		}
	}
}

// encode writes p gzipped, as pprof reads it.
func encode(p *profile.Profile) ([]byte, error) {
	if err := p.CheckValid(); err != nil {
		return nil, fmt.Errorf("checking profile: %w", err)
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		return nil, fmt.Errorf("writing profile: %w", err)
	}
	return buf.Bytes(), nil
}
