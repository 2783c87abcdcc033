package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// TestLossShouted: lost events lead the text and the warnings, name the remedy, and mark the
// figures they make unreliable; a clean trace says nothing of the kind.
func TestLossShouted(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, al(1, 1, event.Malloc, 10, 0x10, stMain))
	r := b.Finish(&fakeSym{}, Meta{Lost: LostEvents{RingBuffer: 7}, RingBytes: 1 << 20, Stacks: StackStats{Truncated: 3}})
	if len(r.Warnings) < 2 || !strings.Contains(r.Warnings[0], "7 events lost") || !strings.Contains(r.Warnings[0], "--ring-size 4194304") {
		t.Errorf("warnings %q: the first must say 7 events were lost and name --ring-size 4194304", r.Warnings)
	}
	if !strings.Contains(strings.Join(r.Warnings, "\n"), "3 stacks stop early") {
		t.Errorf("warnings %q do not mention the cut stacks", r.Warnings)
	}
	if strings.Join(r.Unreliable, ",") != "outstanding,unmatched_frees" {
		t.Errorf("unreliable = %v", r.Unreliable)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(buf.String(), "\n", 3)
	if len(lines) < 2 || !strings.Contains(lines[1], "7 EVENTS LOST") {
		t.Errorf("text starts %q: the second line must shout the loss", lines[:2])
	}

	clean := b.Finish(&fakeSym{}, Meta{})
	if len(clean.Unreliable) != 0 || len(clean.Warnings) != 0 {
		t.Errorf("a lossless report: unreliable %v, warnings %v", clean.Unreliable, clean.Warnings)
	}
}
