package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// soakRSSLimitKB bounds udstrace's resident memory over the soak.
const soakRSSLimitKB = 300 << 10

// soakKillKB is where the soak stops udstrace to protect the machine (and the other work on it).
const soakKillKB = 2 << 20

// checkSoak traces a shell loop that spawns short-lived allocating processes for the whole duration,
// sampling udstrace's VmRSS every second: the peak must stay under a bound, and the second half must
// not keep growing (mean of the last quarter at most 1.5× the mean of the second quarter).
func checkSoak(e *env, d time.Duration) *result {
	secs := int(d.Seconds())
	ap := filepath.Join(e.bin, "allocpattern")
	done := filepath.Join(e.work, "soak.done")
	loop := fmt.Sprintf(`end=$(( $(date +%%s) + %d )); n=0
while [ "$(date +%%s)" -lt "$end" ]; do %s 5 >/dev/null; n=$((n+1)); done
echo "soak: $n iterations"; : > %s`, secs, ap, done)
	res := newResult("soak", fmt.Sprintf("run -- sh loop spawning allocpattern + date for %s; VmRSS every 1 s", d))
	progress("soak: %s", res.tried)
	out := filepath.Join(e.work, "soak.json")
	u, err := e.startUd("soak", []string{"run", "--format", "json", "-o", out, "--", "sh", "-c", loop}, nil, true)
	if err != nil {
		res.fail("%v", err)
		return res
	}
	killed := make(chan int64, 1)
	go func() { // the guard: udstrace is stopped before it can starve the machine
		for {
			select {
			case <-u.sampled:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if kb, ok := vmRSS(u.pid); ok && kb > soakKillKB {
				killed <- kb
				u.cmd.Process.Kill()
				return
			}
		}
	}()
	code, sig, timedOut := u.wait(d + 5*time.Minute)
	select {
	case kb := <-killed:
		res.fail("udstrace killed at VmRSS %s (the guard's limit) to protect the machine", mib(kb))
	default:
		if code != 0 || timedOut {
			res.fail("udstrace exit %d signal %v timed out %v: %s", code, sig, timedOut, u.lastLines(3))
		}
	}
	if fi, err := os.Stat(done); err == nil {
		res.note("the traced loop ended %s after udstrace started; udstrace ended %s after it",
			fi.ModTime().Sub(u.begun).Round(time.Second), u.end.Sub(fi.ModTime()).Round(time.Second))
	}
	rss := u.rss
	if len(rss) < 8 {
		res.fail("only %d RSS samples", len(rss))
		return res
	}
	judgeRSS(res, rss)
	if rep, err := readReport(out); err == nil {
		res.note("report: %d processes, lost_events %d, %d warnings", len(rep.Processes), rep.LostEvents, len(rep.Warnings))
		if fi, err := os.Stat(out); err == nil {
			res.note("report size %s; udstrace ran %s", mib(fi.Size()>>10), u.end.Sub(u.begun).Round(time.Second))
		}
	} else if code == 0 {
		res.fail("%v", err)
	}
	return res
}

func mean(v []int64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range v {
		s += float64(x)
	}
	return s / float64(len(v))
}

func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// judgeRSS notes udstrace's VmRSS over a soak (start, peak, end, the second and last quarters'
// means, a timeline) and fails res when it peaks over the bound or still grows in the second half.
func judgeRSS(res *result, rss []int64) {
	peak := int64(0)
	for _, v := range rss {
		peak = max(peak, v)
	}
	q := len(rss) / 4
	q2, q4 := mean(rss[q:2*q]), mean(rss[len(rss)-q:])
	res.note("VmRSS: start %s, peak %s, end %s; mean of 2nd quarter %s, of last quarter %s (growth %.0f%%); %d samples",
		mib(rss[0]), mib(peak), mib(rss[len(rss)-1]), mib(int64(q2)), mib(int64(q4)), 100*(q4/q2-1), len(rss))
	var tl []string
	for i := 0; i < len(rss); i += max(1, len(rss)/12) {
		tl = append(tl, fmt.Sprintf("%ds:%.0f", i, float64(rss[i])/1024))
	}
	res.note("VmRSS timeline (s since start: MiB): %s", strings.Join(tl, " "))
	if peak > soakRSSLimitKB {
		res.fail("peak VmRSS %s over the %s bound", mib(peak), mib(soakRSSLimitKB))
	}
	if q4 > 1.5*q2 {
		res.fail("VmRSS still growing in the second half: last quarter %s vs second quarter %s", mib(int64(q4)), mib(int64(q2)))
	}
}
