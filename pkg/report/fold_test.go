package report

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/pkg/event"
)

// churnEvents: n short-lived processes of two executables, 10 ms apart; each leaks one block
// and one mapping, frees another block, and exits.
func churnEvents(n int) []any {
	var evs []any
	for i := range n {
		pid := uint32(1000 + i)
		t := uint64(i) * 10 * uint64(time.Millisecond)
		exe := []string{"/bin/a", "/bin/b"}[i%2]
		st := []([]event.Frame){stMain, stHelper, stFdopen}[i%3]
		evs = append(evs,
			execp(t, pid, exe),
			al(t+1, pid, event.Malloc, uint64(16+i%7), 0x1000, st),
			al(t+2, pid, event.Malloc, 64, 0x2000, stMain),
			al(t+3, pid, event.Free, 0, 0x2000, stMain),
			al(t+4, pid, event.Mmap, 4096, 0x7000, stMmap),
			exit(t+5, pid, 0),
		)
	}
	return evs
}

// siteKey identifies a site across processes: what the folded report merges by.
func siteKey(s Site) string {
	var fs []string
	for _, f := range s.Stack {
		fs = append(fs, f.Symbol)
	}
	return s.Kind + " " + strings.Join(fs, ";")
}

type siteSum struct {
	count, bytes, outCount, outBytes uint64
	older                            BlockCount
	oldest                           float64
}

func sumSites(r *Report) map[string]siteSum {
	m := map[string]siteSum{}
	for _, s := range r.Sites {
		k := siteKey(s)
		x := m[k]
		x.count += s.Count
		x.bytes += s.Bytes
		x.outCount += s.OutstandingCount
		x.outBytes += s.OutstandingBytes
		x.older.Count += s.OutstandingOlderThanMinAge.Count
		x.older.Bytes += s.OutstandingOlderThanMinAge.Bytes
		x.oldest = max(x.oldest, s.OldestOutstandingAgeSeconds)
		m[k] = x
	}
	return m
}

func sumProcs(r *Report) (n int, tot Process) {
	for _, p := range r.Processes {
		n += max(p.FoldedProcesses, 1)
		tot.Allocations += p.Allocations
		tot.AllocatedBytes += p.AllocatedBytes
		tot.Frees += p.Frees
		tot.UnmatchedFrees += p.UnmatchedFrees
		tot.OutstandingCount += p.OutstandingCount
		tot.OutstandingBytes += p.OutstandingBytes
		tot.MmapCalls += p.MmapCalls
		tot.MmapBytes += p.MmapBytes
	}
	return n, tot
}

// TestFoldingKeepsTotals: folding exited processes changes how many entries there are, never a total.
func TestFoldingKeepsTotals(t *testing.T) {
	const n, keep = 3000, 10
	for _, minAge := range []time.Duration{0, 5 * time.Second} {
		t.Run(fmt.Sprint("min-age ", minAge), func(t *testing.T) {
			evs := churnEvents(n)
			meta := Meta{Now: uint64(n) * 10 * uint64(time.Millisecond)}
			full := NewBuilder(testOpts(Options{MinAge: minAge}))
			feed(t, full, evs...)
			folded := NewBuilder(testOpts(Options{MinAge: minAge, MaxProcs: keep}))
			feed(t, folded, evs...)
			if bound := 2 * (1024 + keep + 2 + 100); len(folded.procs)+len(folded.order) > bound {
				t.Errorf("folding builder holds %d procs and %d sites, want at most %d together", len(folded.procs), len(folded.order), bound)
			}
			rf, rg := full.Finish(&fakeSym{}, meta), folded.Finish(&fakeSym{}, meta)

			nf, tf := sumProcs(rf)
			ng, tg := sumProcs(rg)
			if nf != n || ng != n {
				t.Errorf("processes: %d unfolded, %d folded, want %d", nf, ng, n)
			}
			tf.PID, tg.PID = 0, 0
			if fmt.Sprint(tf) != fmt.Sprint(tg) {
				t.Errorf("totals differ:\nunfolded %+v\nfolded   %+v", tf, tg)
			}
			groups := 0
			for _, p := range rg.Processes {
				if p.FoldedProcesses > 0 {
					groups++
					if p.PID != 0 || p.ExitCode != nil || p.Exe == "" {
						t.Errorf("group entry %+v: want pid 0, no exit code, its executable", p)
					}
				}
			}
			if groups != 2 || len(rg.Processes) >= n/2 {
				t.Errorf("%d entries with %d groups, want 2 groups (one per executable) and few entries", len(rg.Processes), groups)
			}
			sf, sg := sumSites(rf), sumSites(rg)
			if len(sf) != len(sg) {
				t.Errorf("%d distinct stacks unfolded, %d folded", len(sf), len(sg))
			}
			for k, x := range sf {
				if sg[k] != x {
					t.Errorf("site %s: unfolded %+v, folded %+v", k, x, sg[k])
				}
			}
			if !strings.Contains(strings.Join(rg.Warnings, "\n"), "folded") {
				t.Errorf("no warning about folding: %q", rg.Warnings)
			}
			var buf bytes.Buffer
			if err := rg.WriteText(&buf); err != nil {
				t.Fatal(err)
			}
			text := buf.String()
			if !strings.Contains(text, " procs)") || !strings.Contains(text, "pid (folded)") {
				t.Errorf("text report does not show the folded entries:\n%s", text[:min(len(text), 2000)])
			}
		})
	}
}

// TestLateEventsFindExitedProcess: an event read after its process's exit record still lands on it.
func TestLateEventsFindExitedProcess(t *testing.T) {
	b := NewBuilder(testOpts(Options{MaxProcs: 1}))
	feed(t, b,
		execp(0, 7, "/bin/a"), exit(1*sec, 7, 0), // kept
		execp(1*sec, 8, "/bin/a"), al(1*sec+1, 8, event.Malloc, 5, 0x10, stMain), exit(2*sec, 8, 0),
		al(2*sec-1, 8, event.Malloc, 6, 0x20, stMain), // late: before the exit, read after it
		execp(5*sec, 9, "/bin/a"), exit(6*sec, 9, 0),  // folds 8
	)
	r := b.Finish(&fakeSym{}, Meta{})
	var g *Process
	for i := range r.Processes {
		if r.Processes[i].FoldedProcesses > 0 {
			g = &r.Processes[i]
		}
		if r.Processes[i].PID == 8 {
			t.Errorf("pid 8 still reported alone: %+v", r.Processes[i])
		}
	}
	if g == nil || g.Allocations != 2 || g.AllocatedBytes != 11 {
		t.Fatalf("group %+v: want pid 8's two allocations (11 B)", g)
	}
}

// TestCountedAfterExit: count mode's totals arrive after every exit; they belong to the process
// that exited, not to a new incarnation of its pid, and folding waits for them.
func TestCountedAfterExit(t *testing.T) {
	b := NewBuilder(testOpts(Options{MaxProcs: 1, FoldAtEnd: true}))
	feed(t, b,
		execp(0, 7, "/bin/sh"),
		execp(1*sec, 8, "/bin/a"), exit(2*sec, 8, 0),
		execp(3*sec, 9, "/bin/a"), exit(4*sec, 9, 0),
		exit(9*sec, 7, 0), // the latest event, long after 8 and 9 exited
	)
	b.Counted(8, "", event.Malloc, sid(stMain), 3, 30)
	b.Counted(9, "", event.Malloc, sid(stMain), 4, 40)
	b.Counted(7, "", event.Malloc, sid(stHelper), 1, 10)
	b.Settle()
	r := b.Finish(&fakeSym{}, Meta{})
	if len(r.Processes) != 2 {
		t.Fatalf("%d entries, want sh and one folded entry for a: %+v", len(r.Processes), r.Processes)
	}
	for _, p := range r.Processes {
		switch {
		case p.PID == 7 && p.Allocations == 1:
		case p.PID == 0 && p.FoldedProcesses == 2 && p.Allocations == 7 && p.AllocatedBytes == 70 && p.Exe == "/bin/a":
		default:
			t.Errorf("unexpected entry %+v", p)
		}
	}
}
