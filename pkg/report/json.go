package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// WriteJSON writes the report as one indented JSON document (layout in schema.md). Sites are
// written one at a time: a large trace's report runs to a hundred megabytes, which need not be
// in memory twice (encoded, then indented) at once.
func (r *Report) WriteJSON(w io.Writer) error {
	head := *r
	head.Sites = []Site{}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // symbols like operator<< stay readable
	if err := enc.Encode(&head); err != nil {
		return err
	}
	const empty = "\n  \"sites\": [],\n"
	doc := buf.Bytes()
	at := bytes.Index(doc, []byte(empty))
	if at < 0 || len(r.Sites) == 0 {
		_, err := w.Write(doc)
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.Write(doc[:at])
	bw.WriteString("\n  \"sites\": [")
	var site []byte
	for i := range r.Sites {
		out, ok := appendSite(site[:0], &r.Sites[i], "    ", "  ")
		if !ok {
			return fmt.Errorf("writing site %d: its oldest_outstanding_age_seconds is %v, which JSON cannot hold", r.Sites[i].ID, r.Sites[i].OldestOutstandingAgeSeconds)
		}
		site = out
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString("\n    ")
		bw.Write(site)
	}
	bw.WriteString("\n  ],\n")
	bw.Write(doc[at+len(empty):])
	return bw.Flush()
}

// Hex is an address or file offset, written in JSON as a "0x…" string.
type Hex uint64

// MarshalJSON writes h as a quoted hex string.
func (h Hex) MarshalJSON() ([]byte, error) {
	return []byte(`"0x` + strconv.FormatUint(uint64(h), 16) + `"`), nil
}

// UnmarshalJSON reads a quoted "0x…" string (or a plain number) back.
func (h *Hex) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if !strings.HasPrefix(s, "0x") {
		v, err = strconv.ParseUint(s, 10, 64)
	}
	if err != nil {
		return fmt.Errorf("report: bad hex value %s", b)
	}
	*h = Hex(v)
	return nil
}
