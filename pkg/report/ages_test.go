package report

import (
	"bytes"
	"cmp"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/pkg/event"
)

const sec = uint64(time.Second)

// agesEvents: pid 1 keeps an old block and a young one, frees another, trims an mmap; pid 2 execs away a block.
func agesEvents() []any {
	return []any{
		al(1*sec, 1, event.Malloc, 10, 0x10, stMain),   // lives: 9s old at 10s
		al(5*sec, 1, event.Malloc, 20, 0x20, stMain),   // freed below
		al(2*sec, 1, event.Mmap, 8192, 0x7000, stMmap), // trimmed to 4096, keeps its time
		al(3*sec, 2, event.Malloc, 30, 0x10, stFdopen), // pid 2 execs: still outstanding, still ageing
		execp(4*sec, 2, "/bin/true"),
		al(6*sec, 1, event.Munmap, 4096, 0x7000, stMmap),
		al(8*sec, 1, event.Malloc, 40, 0x30, stHelper), // young: 2s old
		fork(8*sec, 1, 3), exit(8*sec+1, 3, 0), // the child's inherited blocks are the parent's
		al(9*sec, 1, event.Free, 0, 0x20, stMain),
		al(9*sec, 1, event.Brk, 1<<16, 0, stBrk),              // brk growth is not a live block
		al(9*sec+500, 1, event.Calloc, 1, 0x40, stk(fMalloc)), // the latest event
	}
}

func siteOf(t *testing.T, r *Report, pid uint32, kind string, stack0 string) Site {
	t.Helper()
	for _, s := range r.Sites {
		if s.PID == pid && s.Kind == kind && (stack0 == "" || len(s.Stack) > 1 && s.Stack[1].Function == stack0) {
			return s
		}
	}
	t.Fatalf("no %s site of pid %d via %s", kind, pid, stack0)
	return Site{}
}

func TestOutstandingAges(t *testing.T) {
	type want struct {
		pid         uint32
		kind, via   string
		oldest      float64
		older       BlockCount
		outstanding BlockCount
	}
	cases := []struct {
		name   string
		minAge time.Duration
		now    uint64
		want   []want
	}{
		{name: "min age 4s at 10s", minAge: 4 * time.Second, now: 10 * sec, want: []want{
			{1, "malloc", "main", 9, BlockCount{1, 10}, BlockCount{1, 10}},
			{1, "malloc", "helper", 2, BlockCount{}, BlockCount{1, 40}},
			{1, "mmap", "main", 8, BlockCount{1, 4096}, BlockCount{1, 4096}},
			{2, "malloc", "_IO_new_fdopen", 7, BlockCount{1, 30}, BlockCount{1, 30}},
			{1, "brk", "main", 0, BlockCount{}, BlockCount{}},
		}},
		{name: "min age 0 counts every outstanding block", now: 10 * sec, want: []want{
			{1, "malloc", "main", 9, BlockCount{1, 10}, BlockCount{1, 10}},
			{1, "malloc", "helper", 2, BlockCount{1, 40}, BlockCount{1, 40}},
			{2, "malloc", "_IO_new_fdopen", 7, BlockCount{1, 30}, BlockCount{1, 30}},
		}},
		{name: "now 0 ages at the latest event", minAge: 7 * time.Second, want: []want{
			{1, "malloc", "main", 8.0000005, BlockCount{1, 10}, BlockCount{1, 10}},
			{1, "mmap", "main", 7.0000005, BlockCount{1, 4096}, BlockCount{1, 4096}},
			{2, "malloc", "_IO_new_fdopen", 6.0000005, BlockCount{}, BlockCount{1, 30}},
		}},
		{name: "now before a block's time clamps to 0", minAge: time.Nanosecond, now: 5 * sec, want: []want{
			{1, "malloc", "helper", 0, BlockCount{}, BlockCount{1, 40}},
			{1, "malloc", "main", 4, BlockCount{1, 10}, BlockCount{1, 10}},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := NewBuilder(testOpts(Options{MinAge: c.minAge}))
			feed(t, b, agesEvents()...)
			r := b.Finish(&fakeSym{}, Meta{Now: c.now})
			if wantNow := cmp.Or(c.now, 9*sec+500); r.AgeReference != wantNow || r.MinAgeSeconds != c.minAge.Seconds() {
				t.Errorf("age reference %d, min age %v", r.AgeReference, r.MinAgeSeconds)
			}
			for _, w := range c.want {
				s := siteOf(t, r, w.pid, w.kind, w.via)
				if s.OldestOutstandingAgeSeconds != w.oldest || s.OutstandingOlderThanMinAge != w.older ||
					(BlockCount{s.OutstandingCount, s.OutstandingBytes}) != w.outstanding {
					t.Errorf("pid %d %s via %s: oldest %v older %+v outstanding %d/%d, want %+v",
						w.pid, w.kind, w.via, s.OldestOutstandingAgeSeconds, s.OutstandingOlderThanMinAge,
						s.OutstandingCount, s.OutstandingBytes, w)
				}
			}
			if c.minAge == 0 {
				for _, s := range r.Sites {
					if s.OutstandingOlderThanMinAge != (BlockCount{s.OutstandingCount, s.OutstandingBytes}) {
						t.Errorf("site %d: older %+v != outstanding %d/%d", s.ID, s.OutstandingOlderThanMinAge, s.OutstandingCount, s.OutstandingBytes)
					}
				}
			}
		})
	}
}

func TestAgesJSONAndText(t *testing.T) {
	b := NewBuilder(testOpts(Options{MinAge: 4 * time.Second}))
	feed(t, b, agesEvents()...)
	r := b.Finish(&fakeSym{}, Meta{Now: 10 * sec})
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["min_age_seconds"] != 4.0 || doc["age_reference_time"] != 1e10 {
		t.Errorf("min_age_seconds %v age_reference_time %v", doc["min_age_seconds"], doc["age_reference_time"])
	}
	for i := range r.Sites {
		jsonAt(t, doc, "sites", i, "oldest_outstanding_age_seconds")
		jsonAt(t, doc, "sites", i, "outstanding_older_than_min_age", "count")
		jsonAt(t, doc, "sites", i, "outstanding_older_than_min_age", "bytes")
	}

	// The text comes out the same from the Report and from its JSON: the section needs no Builder.
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	for _, rep := range []*Report{r, &back} {
		buf.Reset()
		if err := rep.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		for _, want := range []string{
			"outstanding 1 (4,096 B) oldest 8s\n",
			"outstanding 1 (40 B) oldest 2s\n",
			"\nLONG-LIVED (older than 4s): 3 blocks at 3 sites (4,136 B)\n",
			"pid 1 comm  1 block  4,096 B  of 1 outstanding  oldest 8s  main\n",
			"pid 2 new   1 block  30 B     of 1 outstanding  oldest 7s  _IO_new_fdopen\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("text lacks %q:\n%s", want, out)
			}
		}
		// The section ends the report here: no socket call was made, so no verdict follows it.
		if i := strings.Index(out, "LONG-LIVED"); i < 0 || strings.Contains(out[i:], "helper") || strings.Contains(out, "SOCKET PATH") {
			t.Errorf("long-lived section misplaced or lists a young site:\n%s", out)
		}
	}

	b = NewBuilder(testOpts(Options{}))
	feed(t, b, agesEvents()...)
	buf.Reset()
	if err := b.Finish(&fakeSym{}, Meta{}).WriteText(&buf); err != nil || strings.Contains(buf.String(), "LONG-LIVED") {
		t.Errorf("min age 0 printed a long-lived section (err %v)", err)
	}
}
