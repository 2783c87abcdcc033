package report

import (
	"bytes"
	"encoding/json"
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
