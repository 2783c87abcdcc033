package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// checkConcurrent runs two udstraces at once on allocpattern and checks that each reports exactly
// allocount's counts for its own process: neither sees the other's target, loses anything or double counts.
func checkConcurrent(e *env) []*result {
	var rows []*result
	for _, c := range []struct {
		rounds  string
		tracers int
	}{{"3", 2}, {"100", 2}} {
		rows = append(rows, e.concurrentOnce(c.rounds, c.tracers))
	}
	return rows
}

func (e *env) concurrentOnce(rounds string, tracers int) *result {
	ap := filepath.Join(e.bin, "allocpattern")
	res := newResult("concurrent tracers", fmt.Sprintf("%d × run --format json -- allocpattern %s at once", tracers, rounds))
	progress("concurrent: %s", res.tried)
	truths, _, err := e.interpose([]string{ap, rounds})
	if err != nil || len(truths) != 1 {
		res.fail("ground truth: %v", err)
		return res
	}
	var want counts
	for _, t := range truths {
		want = t.expected()
	}
	runs := make([]*udRun, tracers)
	outs := make([]string, tracers)
	for i := range runs {
		outs[i] = filepath.Join(e.work, fmt.Sprintf("concurrent-%s-%d.json", rounds, i))
		runs[i], err = e.startUd(fmt.Sprintf("concurrent-%s-%d", rounds, i), []string{"run", "--format", "json", "-o", outs[i], "--", ap, rounds}, nil, false)
		if err != nil {
			res.fail("starting udstrace %d: %v", i, err)
			return res
		}
	}
	var spans []string
	for i, u := range runs {
		code, sig, timedOut := u.wait(3 * time.Minute)
		if code != 0 || timedOut {
			res.fail("udstrace %d: exit %d signal %v timed out %v: %s", i, code, sig, timedOut, u.lastLines(3))
			continue
		}
		spans = append(spans, fmt.Sprintf("#%d %s–%s", i, u.begun.Format("15:04:05.000"), u.end.Format("15:04:05.000")))
		rep, err := readReport(outs[i])
		if err != nil {
			res.fail("%v", err)
			continue
		}
		if len(rep.Processes) != 1 {
			res.fail("udstrace %d reported %d processes, want 1 (its own allocpattern)", i, len(rep.Processes))
			continue
		}
		if rep.LostEvents != 0 {
			res.fail("udstrace %d lost %d events", i, rep.LostEvents)
		}
		got := rep.Processes[0].reported()
		if d := diffCounts(got, want); len(d) > 0 {
			res.fail("udstrace %d (pid %d): %s", i, rep.Processes[0].PID, strings.Join(d, "; "))
		} else {
			res.note("udstrace %d: pid %d, exact: %s", i, rep.Processes[0].PID, formatCounts(got))
		}
	}
	res.note("runs overlapped: %s", strings.Join(spans, ", "))
	return res
}
