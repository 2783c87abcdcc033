package report

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// TestJSONStreamedIsStandard: writing sites one at a time gives byte for byte what encoding the
// whole report at once gives, with no sites, one, or several.
func TestJSONStreamedIsStandard(t *testing.T) {
	for _, evs := range [][]any{
		nil,
		{al(1, 1, event.Malloc, 10, 0x10, stMain)},
		{al(1, 1, event.Malloc, 10, 0x10, stMain), al(2, 1, event.Calloc, 20, 0x20, stHelper), al(3, 2, event.Malloc, 7, 0x30, stFdopen)},
	} {
		r := build(t, Meta{Warnings: []string{"a <warning> & more"}}, evs...)
		var got, want bytes.Buffer
		if err := r.WriteJSON(&got); err != nil {
			t.Fatal(err)
		}
		enc := json.NewEncoder(&want)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Fatalf("%d sites: streamed JSON differs:\n%s\n---- want\n%s", len(r.Sites), got.String(), want.String())
		}
	}
}

// FuzzSiteJSON: the hand-written site encoder writes exactly what encoding/json's indenting
// encoder writes, for any strings (control characters, invalid UTF-8, U+2028), numbers and ages.
func FuzzSiteJSON(f *testing.F) {
	f.Add("cc1", "malloc", "libc.so.6!malloc+0x0", "malloc/malloc.c", uint64(592), int64(3281), 0.25, uint8(1))
	f.Add("a\"b\\c\n\t\x01\x7f", "k\u2028\u2029", "\xff\xfe<&>", "", uint64(0), int64(-1), 1e-7, uint8(2))
	f.Add("", "", "", "", uint64(1<<63), int64(1<<40), 1e21, uint8(0))
	f.Add("bio", "malloc", "x", "y", uint64(9000), int64(2), 0.5, uint8(0x11))
	f.Add("bio", "malloc", "x", "y", uint64(9000), int64(2), 0.5, uint8(0x23))
	f.Fuzz(func(t *testing.T, comm, kind, sym, file string, n uint64, line int64, age float64, frames uint8) {
		if math.IsNaN(age) || math.IsInf(age, 0) {
			return // refused by both (TestSiteJSONRefusesNaN)
		}
		s := Site{ID: int(line), PID: uint32(n), Comm: comm, Kind: kind, Count: n, Failed: n / 3, Bytes: n * 7,
			OutstandingCount: n >> 1, OutstandingBytes: n >> 2, OldestOutstandingAgeSeconds: age,
			OutstandingOlderThanMinAge: BlockCount{Count: n >> 3, Bytes: n >> 4}}
		s.notTraced = frames&8 != 0 // count mode: the outstanding fields are left out
		switch frames & 0x30 {      // the thread fields, omitted when zero
		case 0x10:
			s.TID, s.Thread, s.Threads = uint32(n>>7), kind+comm, 1
		case 0x20:
			s.Threads = int(frames)
		}
		if frames%4 != 0 { // 0: a nil stack
			s.Stack = []StackFrame{}
			for i := range int(frames % 4) {
				s.Stack = append(s.Stack, StackFrame{Frame: i, Addr: Hex(n), Module: file + comm, BuildID: kind,
					FileOffset: Hex(n >> 5), Symbol: sym, Function: sym + kind, Offset: n >> 6, File: file,
					Line: int(line), Inlined: i%2 == 1})
			}
		}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetIndent("    ", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(&s); err != nil {
			t.Fatal(err)
		}
		got, ok := appendSite(nil, &s, "    ", "  ")
		if !ok || string(got)+"\n" != want.String() {
			t.Fatalf("hand-written site differs (ok %v):\n%s\n---- want\n%s", ok, got, want.String())
		}
	})
}

// TestSiteJSONRefusesNaN: an age JSON cannot hold is an error, as encoding/json makes it.
func TestSiteJSONRefusesNaN(t *testing.T) {
	r := &Report{Sites: []Site{{ID: 3, OldestOutstandingAgeSeconds: math.NaN()}}}
	if err := r.WriteJSON(io.Discard); err == nil {
		t.Fatal("a NaN age was written as JSON")
	}
}
