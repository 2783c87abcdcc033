package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// manySites: two processes, each calling malloc from n distinct places in the executable (site i
// asks i+1 bytes, keeps every third block) and n more from libc's fdopen (no executable frame).
func manySites(n int) []any {
	var evs []any
	for _, pid := range []uint32{100, 200} {
		evs = append(evs, execp(0, pid, exePath))
		addr := uint64(pid) << 32
		for i := range n {
			st := stk(fMalloc, fr(exePath, 0x4000+uint64(i)*16), fMain)
			if i%2 == 1 {
				st = stk(fMalloc, fr(libcPath, 0x8000+uint64(i)*16), fFdopen)
			}
			t := uint64(i + 1)
			for j := range i%5 + 1 {
				addr += 0x100
				evs = append(evs, al(t, pid, event.Malloc, uint64(i+1), addr, st))
				if (i+j)%3 != 0 {
					evs = append(evs, al(t, pid, event.Free, 0, addr, stMain))
				}
			}
		}
	}
	return evs
}

type pidSites struct{ sites, count, failed, bytes, outCount, outBytes, older uint64 }

func totalsByPID(r *Report) map[uint32]pidSites {
	m := map[uint32]pidSites{}
	for _, s := range r.Sites {
		x := m[s.PID]
		x.sites++
		x.count += s.Count
		x.failed += s.Failed
		x.bytes += s.Bytes
		x.outCount += s.OutstandingCount
		x.outBytes += s.OutstandingBytes
		x.older += s.OutstandingOlderThanMinAge.Count
		m[s.PID] = x
	}
	return m
}

// TestFoldSitesKeepsTotals: folding the cold sites past MaxSites changes no total (per process:
// calls, bytes, outstanding blocks, old blocks; the processes' own figures), leaves at most
// MaxSites sites, the hottest unchanged, and says so in a warning, in JSON and text alike.
func TestFoldSitesKeepsTotals(t *testing.T) {
	evs := manySites(400)
	full := NewBuilder(testOpts(Options{}))
	feed(t, full, evs...)
	want := full.Finish(&fakeSym{}, Meta{})
	const limit = 50
	b := NewBuilder(testOpts(Options{MaxSites: limit}))
	feed(t, b, evs...)
	got := b.Finish(&fakeSym{}, Meta{})

	if len(want.Sites) != 800 {
		t.Fatalf("unfolded: %d sites, want 800", len(want.Sites))
	}
	if len(got.Sites) > limit {
		t.Errorf("folded: %d sites, want at most %d", len(got.Sites), limit)
	}
	w, g := totalsByPID(want), totalsByPID(got)
	for pid, x := range w {
		y := g[pid]
		x.sites, y.sites = 0, 0
		if x != y {
			t.Errorf("pid %d: site totals %+v folded, %+v unfolded", pid, y, x)
		}
	}
	folded, entries := 0, 0
	for _, s := range got.Sites {
		if s.FoldedSites == 0 {
			continue
		}
		entries++
		folded += s.FoldedSites
		if len(s.Stack) != 1 || !strings.Contains(s.Stack[0].Symbol, "folded") {
			t.Errorf("folded entry %d: stack %+v, want one frame naming its module", s.ID, s.Stack)
		}
	}
	if entries != 4 || folded != len(want.Sites)-(len(got.Sites)-entries) {
		t.Errorf("%d folded entries standing for %d sites; want 4 (2 processes x 2 calling modules) standing for %d", entries, folded, len(want.Sites)-(len(got.Sites)-entries))
	}
	var kept []Site
	for _, s := range got.Sites {
		if s.FoldedSites == 0 {
			kept = append(kept, s)
		}
	}
	for i, a := range kept { // the hottest are kept as they were
		if b := want.Sites[i]; a.ID != b.ID || a.Bytes != b.Bytes || siteKey(a) != siteKey(b) {
			t.Errorf("site %d: #%d %d B %s, unfolded #%d %d B %s", i, a.ID, a.Bytes, siteKey(a), b.ID, b.Bytes, siteKey(b))
			break
		}
	}
	for i := range want.Processes {
		if a, b := got.Processes[i], want.Processes[i]; a.Allocations != b.Allocations || a.OutstandingBytes != b.OutstandingBytes || a.Frees != b.Frees {
			t.Errorf("process %d changed by folding: %+v, was %+v", a.PID, a, b)
		}
	}
	if !strings.Contains(strings.Join(got.Warnings, "\n"), "--max-sites 50") {
		t.Errorf("warnings %q: want one naming --max-sites 50", got.Warnings)
	}
	var js bytes.Buffer
	if err := got.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if bt := totalsByPID(&back); bt[100] != g[100] || bt[200] != g[200] {
		t.Errorf("JSON: site totals %+v, report %+v", bt, g)
	}
	var txt bytes.Buffer
	if err := got.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(txt.String(), "warning: ") || !strings.Contains(txt.String(), "--max-sites 50") {
		t.Errorf("text report does not warn of the folding:\n%s", txt.String())
	}
}
