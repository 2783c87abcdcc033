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
	// top: the sort key, the rows shown, and the previous frame's figures for the rates.
	sort     string
	rows     int
	prev     map[int]siteFigures
	prevTime time.Time
	fileMaps bool // --include-file-maps
}

func newStreamer(w io.Writer, o options, sub string) *streamer {
	switch {
	case sub == "top":
		return &streamer{w: w, top: true, sort: o.sort, rows: o.topSites, fileMaps: o.fileMaps}
	case o.format == "ndjson":
		return &streamer{w: w, iv: report.NewIntervals(o.topSites), fileMaps: o.fileMaps}
	}
	return nil
}

func (s *streamer) snapshot(r *report.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fileMaps {
		r.IncludeFileMaps()
	}
	if s.top {
		s.draw(r)
		return
	}
	at := r.End // when the snapshot's figures were taken, not when this line is written
	if at.IsZero() {
		at = time.Now()
	}
	if _, err := s.iv.Next(r, at).WriteTo(s.w); err != nil && s.errs == nil {
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

// topSorts are udstrace top's sort keys: what ranks a site now.
var topSorts = map[string]string{
	"bytes":       "bytes allocated per second over the last interval",
	"count":       "calls per second over the last interval",
	"outstanding": "bytes allocated and not freed yet",
	"growth":      "outstanding bytes gained per second over the last interval",
}

// topRow is one site as top shows it: its totals and its rates since the previous frame.
type topRow struct {
	site                 *report.Site
	callsRate, bytesRate float64
	growthRate           float64
	outstandingNotTraced bool
}

// siteFigures are a site's totals at a frame, for the next frame's rates.
type siteFigures struct{ count, bytes, outstanding uint64 }

// draw repaints the terminal with the busiest sites by the --sort key, with rates since the
// previous frame. Every name a traced process chooses is escaped: a comm or symbol must not drive
// the viewer's terminal.
func (s *streamer) draw(r *report.Report) {
	now := time.Now()
	since := s.prevTime
	if since.IsZero() {
		since = r.Start
	}
	secs := max(now.Sub(since).Seconds(), 1e-3)
	count := r.Mode == "count"
	shown := r.ShownSites()
	rows := make([]topRow, 0, len(shown))
	figs := make(map[int]siteFigures, len(shown))
	var totalRate float64
	for i := range shown {
		site := &shown[i]
		prev := s.prev[site.ID]
		figs[site.ID] = siteFigures{site.Count, site.Bytes, site.OutstandingBytes}
		row := topRow{site: site, outstandingNotTraced: count,
			callsRate:  float64(site.Count-min(prev.count, site.Count)) / secs,
			bytesRate:  float64(site.Bytes-min(prev.bytes, site.Bytes)) / secs,
			growthRate: (float64(site.OutstandingBytes) - float64(prev.outstanding)) / secs}
		totalRate += row.bytesRate
		rows = append(rows, row)
	}
	s.prev, s.prevTime = figs, now
	key := func(x topRow) float64 {
		switch s.sort {
		case "count":
			return x.callsRate
		case "outstanding":
			return float64(x.site.OutstandingBytes)
		case "growth":
			return x.growthRate
		}
		return x.bytesRate
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if a, b := key(rows[i]), key(rows[j]); a != b {
			return a > b
		}
		return rows[i].site.Bytes > rows[j].site.Bytes
	})
	fmt.Fprint(s.w, "\x1b[H\x1b[2J")
	fmt.Fprintf(s.w, "udstrace top — %s, %d processes, %s/s allocated, lost events %d, by %s (Ctrl-C to stop)\n\n",
		now.Format("15:04:05"), len(r.Processes), humanBytes(totalRate), r.LostEvents, s.sort)
	tw := tabwriter.NewWriter(s.w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PID\tCOMM\tKIND\tCALLS/s\tBYTES/s\tOUTSTANDING\tGROWTH/s\tCALLS\tBYTES\t CALLER\t")
	for i, row := range rows {
		if i == s.rows {
			break
		}
		site := row.site
		out, growth := humanBytes(float64(site.OutstandingBytes)), signedBytes(row.growthRate)
		if row.outstandingNotTraced {
			out, growth = "-", "-" // count mode traces no frees
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.0f\t%s\t%s\t%s\t%d\t%s\t %s\t\n", site.PID, report.Escape(site.Comm), site.Kind,
			row.callsRate, humanBytes(row.bytesRate), out, growth, site.Count, humanBytes(float64(site.Bytes)), caller(r.SiteStack(site)))
	}
	tw.Flush()
}

// humanBytes writes n bytes with a binary unit, short enough for a column.
func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	u := 0
	for n >= 1024 && u < len(units)-1 {
		n /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%.0f %s", n, units[u])
	}
	return fmt.Sprintf("%.1f %s", n, units[u])
}

func signedBytes(n float64) string {
	if n < 0 {
		return "-" + humanBytes(-n)
	}
	return "+" + humanBytes(n)
}

// caller is the first frame outside the allocator, the line a person looks for.
func caller(stack []report.StackFrame) string {
	for i, f := range stack {
		if i == 0 && len(stack) > 1 {
			continue
		}
		return report.Escape(f.Symbol) // symbols and comms are chosen by the traced programs
	}
	return "?"
}
