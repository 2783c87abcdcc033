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

// TestTableFullShouted: each kernel table that refused inserts is counted in lost_detail and
// named in a warning with --table-size; lossy ones count in lost_events, the others do not.
func TestTableFullShouted(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, al(1, 1, event.Malloc, 10, 0x10, stMain))
	tf := TableFull{Processes: 3, Counts: 5, Sockets: 1, Modules: 2}
	lost := LostEvents{Other: tf.LostCalls() + 40 + 2, Stale: 2, UntracedProcesses: 3, UntracedCalls: 40, TableFull: tf}
	r := b.Finish(&fakeSym{}, Meta{Lost: lost, TableSize: 1024})
	if r.LostEvents != 48 || r.LostDetail.TableFull != tf || r.LostDetail.UntracedCalls != 40 {
		t.Errorf("lost_events %d (want 48), detail %+v", r.LostEvents, r.LostDetail)
	}
	all := strings.Join(r.Warnings, "\n")
	for _, want := range []string{
		"3 processes not traced", "40 allocator calls are missing", "6 calls not traced: kernel tables were full (count-mode sites 5, socket counters 1)",
		"2 allocator calls lost their return probe", "no event lost: modules, frames left as addresses 2", "--table-size 4096",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings %q: none says %q", r.Warnings, want)
		}
	}
	if !strings.HasPrefix(r.Warnings[0], "3 processes not traced") {
		t.Errorf("first warning %q: the untraced processes must lead", r.Warnings[0])
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	if txt := buf.String(); !strings.Contains(txt, "48 EVENTS LOST") || !strings.Contains(txt, "3 processes not traced (40 allocator calls of them)") {
		t.Errorf("text header does not tell the loss and the untraced processes:\n%s", txt)
	}
}
