package report

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"path"
	"strconv"
	"strings"
)

// The HTML report is one self-contained page: the report's data as JSON in a script element,
// and small hand-written JS and CSS inline (html.js, html.css) drawing the flame graph, the
// memory over time and the leak view from it. Nothing is fetched: the page's content security
// policy forbids every request.

//go:embed html.tmpl
var htmlTemplate string

//go:embed html.js
var htmlJS string

//go:embed html.css
var htmlCSS string

var htmlPageTmpl = template.Must(template.New("page").Parse(htmlTemplate))

// htmlData is what the page's script reads: the sites with their stacks as indexes into one
// table of distinct frames (a large report's stacks repeat the same frames thousands of times).
type htmlData struct {
	Title     string      `json:"title"`
	Command   string      `json:"command"`
	Mode      string      `json:"mode"`
	Start     string      `json:"start"`
	Duration  float64     `json:"duration_seconds"`
	Lost      uint64      `json:"lost_events"`
	Warnings  []string    `json:"warnings"`
	FileMaps  bool        `json:"file_maps"` // file mappings' sites shown at first (--include-file-maps)
	MinAge    float64     `json:"min_age_seconds"`
	Procs     []htmlProc  `json:"procs"`
	Mods      []string    `json:"mods"`
	Frames    []htmlFrame `json:"frames"`
	Sites     []htmlSite  `json:"sites"`
	Timeline  []Timeline  `json:"timeline"`
	Peak      []Peak      `json:"peak"`
	Verdict   SocketPath  `json:"verdict"`
	Highlight []int       `json:"highlight"` // the stdio client's sources (the echo experiment's story)
}

type htmlProc struct {
	PID  uint32 `json:"pid"`
	Comm string `json:"comm"`
	Role Role   `json:"role"`
}

// htmlFrame is [name, module index, "file:line"].
type htmlFrame [3]any

type htmlSite struct {
	ID       int     `json:"i"`
	Proc     int     `json:"p"` // index in procs
	Kind     string  `json:"k"` // the allocator function or syscall
	Class    string  `json:"cl"`
	Count    uint64  `json:"c"`
	Bytes    uint64  `json:"b"`
	OutCount uint64  `json:"oc"`
	OutBytes uint64  `json:"o"`
	Peak     uint64  `json:"pk"`
	Age      float64 `json:"age,omitempty"` // oldest outstanding block, seconds
	Label    string  `json:"l"`             // the first frame outside the allocator
	Stack    []int   `json:"s"`             // frames, outermost first
}

// kindClass is the kind filter a site falls under: heap, mmap (anonymous), brk or file.
func kindClass(s *Site) string {
	switch {
	case s.FileBacked:
		return "file"
	case s.Kind == "mmap" || s.Kind == "mremap":
		return "mmap"
	case s.Kind == "brk":
		return "brk"
	}
	return "heap"
}

// WriteHTML writes the report as one self-contained HTML page (see html.js).
func (r *Report) WriteHTML(w io.Writer) error {
	d := r.htmlData()
	js, err := json.Marshal(d) // HTML-escaped: no "</script>" can appear in it
	if err != nil {
		return fmt.Errorf("encoding page data: %w", err)
	}
	var buf bytes.Buffer
	err = htmlPageTmpl.Execute(&buf, map[string]any{
		"Title": d.Title,
		"Data":  template.JS(js),
		"JS":    template.JS(htmlJS),
		"CSS":   template.CSS(htmlCSS),
	})
	if err != nil {
		return fmt.Errorf("rendering page: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

func (r *Report) htmlData() *htmlData {
	d := &htmlData{
		Title: "udstrace: " + strings.Join(r.Command, " "), Command: strings.Join(r.Command, " "),
		Mode: r.Mode, Duration: r.DurationSeconds, Lost: r.LostEvents, Warnings: nonNil(r.Warnings),
		FileMaps: r.withFileMaps, MinAge: r.MinAgeSeconds, Timeline: nonNil(r.Timeline), Peak: nonNil(r.Peak),
		Verdict: r.SocketPath, Highlight: []int{}, Procs: []htmlProc{}, Mods: []string{},
		Frames: []htmlFrame{}, Sites: make([]htmlSite, 0, len(r.Sites)),
	}
	if !r.Start.IsZero() {
		d.Start = r.Start.UTC().Format("2006-01-02 15:04:05 UTC")
	}
	d.Verdict.UserAllocationSites = nonNil(d.Verdict.UserAllocationSites)
	d.Verdict.Processes = nonNil(d.Verdict.Processes)
	procOf := map[uint32]int{}
	addProc := func(pid uint32, comm string, role Role) int {
		i, ok := procOf[pid]
		if !ok {
			i = len(d.Procs)
			procOf[pid] = i
			d.Procs = append(d.Procs, htmlProc{PID: pid, Comm: comm})
		}
		if role != "" {
			d.Procs[i].Role = role
		}
		return i
	}
	for _, p := range r.Processes {
		addProc(p.PID, p.Comm, p.Role)
	}
	peak := map[int]uint64{}
	for _, pk := range r.Peak {
		for _, ps := range pk.Sites {
			peak[ps.Site] += ps.Bytes
		}
	}
	mods := map[string]int{}
	frames := map[htmlFrameKey]int{}
	for i := range r.Sites {
		s := &r.Sites[i]
		hs := htmlSite{ID: s.ID, Proc: addProc(s.PID, s.Comm, ""), Kind: s.Kind, Class: kindClass(s),
			Count: s.Count, Bytes: s.Bytes, OutCount: s.OutstandingCount, OutBytes: s.OutstandingBytes,
			Peak: peak[s.ID], Age: s.OldestOutstandingAgeSeconds, Stack: make([]int, 0, len(s.Stack))}
		hs.Label, _, _ = source(s.Stack)
		for j := len(s.Stack) - 1; j >= 0; j-- {
			f := &s.Stack[j]
			m, ok := mods[f.Module]
			if !ok {
				m = len(d.Mods)
				mods[f.Module] = m
				d.Mods = append(d.Mods, f.Module)
			}
			k := htmlFrameKey{frameName(f), m, f.File, f.Line}
			fi, ok := frames[k]
			if !ok {
				fi = len(d.Frames)
				frames[k] = fi
				loc := ""
				if f.File != "" {
					loc = path.Base(f.File)
					if f.Line > 0 {
						loc += ":" + strconv.Itoa(f.Line)
					}
				}
				d.Frames = append(d.Frames, htmlFrame{k.name, m, loc})
			}
			hs.Stack = append(hs.Stack, fi)
		}
		d.Sites = append(d.Sites, hs)
	}
	for _, sp := range r.SocketPath.Processes {
		if sp.Role == RoleClientStdio {
			for _, src := range sp.Sources {
				d.Highlight = append(d.Highlight, src.Site)
			}
		}
	}
	return d
}

type htmlFrameKey struct {
	name string
	mod  int
	file string
	line int
}
