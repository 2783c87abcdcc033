package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/udstrace/udstrace/pkg/report"
)

const defaultTopInterval = 2 * time.Second

// streamer writes snapshots while tracing: ndjson lines, or the top view.
type streamer struct {
	mu   sync.Mutex
	w    io.Writer
	top  bool
	iv   *report.Intervals
	errs error
}

func newStreamer(w io.Writer, o options, sub string) *streamer {
	switch {
	case sub == "top":
		return &streamer{w: w, top: true}
	case o.format == "ndjson":
		return &streamer{w: w, iv: report.NewIntervals(o.topSites)}
	}
	return nil
}

func (s *streamer) snapshot(r *report.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.top {
		s.draw(r)
		return
	}
	if _, err := s.iv.Next(r, time.Now()).WriteTo(s.w); err != nil && s.errs == nil {
		s.errs = err
	}
	if f, ok := s.w.(*os.File); ok {
		_ = f.Sync()
	}
}

// final writes the closing snapshot, so the last interval is never lost.
func (s *streamer) final(r *report.Report) error {
	s.snapshot(r)
	return s.errs
}

// draw repaints the terminal with the busiest sites, by bytes allocated. Every name a traced
// process chooses is escaped: a comm or symbol must not drive the viewer's terminal.
func (s *streamer) draw(r *report.Report) {
	sites := append([]report.Site(nil), r.Sites...)
	sort.SliceStable(sites, func(i, j int) bool { return sites[i].Bytes > sites[j].Bytes })
	fmt.Fprint(s.w, "\x1b[H\x1b[2J")
	fmt.Fprintf(s.w, "udstrace top — %s, %d processes, lost events %d (Ctrl-C to stop)\n\n",
		time.Now().Format("15:04:05"), len(r.Processes), r.LostEvents)
	tw := tabwriter.NewWriter(s.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tKIND\tCALLS\tBYTES\tOUTSTANDING\tCALLER")
	for i, site := range sites {
		if i == 20 {
			break
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%s\n", site.PID, report.Escape(site.Comm), site.Kind, site.Count, site.Bytes, site.OutstandingBytes, caller(site))
	}
	tw.Flush()
}

// caller is the first frame outside the allocator, the line a person looks for.
func caller(s report.Site) string {
	for i, f := range s.Stack {
		if i == 0 && len(s.Stack) > 1 {
			continue
		}
		return report.Escape(f.Symbol) // symbols and comms are chosen by the traced programs
	}
	return "?"
}
