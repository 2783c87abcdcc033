package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// floodSrc: 4 threads, each a fixed number of malloc/free pairs as fast as it can. Everything else
// the process does (loading, thread stacks, arenas: each thread's warm-up pair) happens before a
// barrier, with a pause for the tracer to drain, and the exit follows a pause too: so the only events
// that can be lost to a full ring buffer are the flood's own malloc and free calls, and
// "missing calls == lost events" must hold exactly. It prints the flood's own duration in ns.
const floodSrc = `#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4
static long per_thread;
static pthread_barrier_t start, warm;
static void *volatile sink;

static void *worker(void *arg) {
	(void)arg;
	void *p = malloc(48); /* warm-up: this thread's arena and tcache */
	sink = p;
	free(p);
	pthread_barrier_wait(&warm);
	pthread_barrier_wait(&start);
	for (long i = 0; i < per_thread; i++) {
		p = malloc(32 + (size_t)(i & 7) * 8);
		sink = p;
		free(p);
	}
	return NULL;
}

static long long now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
	pthread_t t[THREADS];
	char buf[32];
	int n = sizeof(buf);
	if (argc != 2)
		return 2;
	per_thread = atol(argv[1]);
	pthread_barrier_init(&warm, NULL, THREADS + 1);
	pthread_barrier_init(&start, NULL, THREADS + 1);
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	pthread_barrier_wait(&warm);
	usleep(300000); /* let the tracer drain the start-up events */
	long long t0 = now();
	pthread_barrier_wait(&start);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	long long ns = now() - t0;
	usleep(500000); /* and catch up before the exit event */
	buf[--n] = '\n';
	do {
		buf[--n] = (char)('0' + ns % 10);
		ns /= 10;
	} while (ns > 0);
	write(1, buf + n, sizeof(buf) - (size_t)n);
	return 0;
}
`

const floodThreads = 4

// floodRun is one traced flood and what was found in it.
type floodRun struct {
	hotNS int64
	rep   *report
	p     *proc
	u     *udRun
}

func checkFlood(e *env, target time.Duration) []*result {
	res := newResult("flood", "")
	bin, err := e.compile("flood", floodSrc, "-pthread")
	if err != nil {
		res.tried = "compile the flood program"
		res.fail("%v", err)
		return []*result{res}
	}
	// Baseline: a flood too small to lose anything shows what udstrace reports beyond the program's
	// own calls (glibc frees each exiting thread's tcache with internal calls to free, which the free
	// uprobe sees and the interposer cannot): the loss accounting below allows for exactly that.
	base := newResult("flood: baseline", fmt.Sprintf("%d threads × 10 pairs, nothing lost: udstrace vs allocount", floodThreads))
	progress("flood: baseline")
	extra, baseProc, ok := e.floodBaseline(bin, base)
	if !ok {
		return []*result{base}
	}
	// Calibration: a short traced flood says how fast a traced pair goes.
	const calib = 20000
	progress("flood: calibrating with %d pairs per thread", calib)
	cr, err := e.traceFlood(bin, calib, "calib")
	if err != nil {
		res.tried = "calibration"
		res.fail("%v", err)
		return []*result{base, res}
	}
	perPair := float64(cr.hotNS) / calib
	count := int64(float64(target.Nanoseconds()) / perPair)
	count = max(count, 50000)
	count = min(count, 20000000)
	progress("flood: %.2f µs per traced pair per thread: %d pairs per thread for ~%s", perPair/1000, count, target)

	rows := []*result{base}
	rows = append(rows, e.floodOnce(bin, count, "default ring (16 MiB)", nil, extra, baseProc))
	// A tiny ring buffer makes loss certain, whatever the machine. Frame-pointer stacks keep events
	// small enough that the few start-up events (exec, the loader's mmaps) still fit before the flood.
	small := max(count/8, 50000)
	rows = append(rows, e.floodOnce(bin, small, "--ring-size 65536 --stack fp", []string{"--ring-size", "65536", "--stack", "fp"}, extra, baseProc))
	return rows
}

// floodBaseline traces a flood that loses nothing and returns, per kind, the calls udstrace reports
// beyond allocount's count.
func (e *env) floodBaseline(bin string, res *result) (counts, *proc, bool) {
	truths, _, err := e.interpose([]string{bin, "10"})
	if err != nil || len(truths) != 1 {
		res.fail("ground truth: %v (%d count files)", err, len(truths))
		return nil, nil, false
	}
	var want counts
	for _, t := range truths {
		want = t.expected()
	}
	fr, err := e.traceFlood(bin, 10, "baseline")
	if err != nil {
		res.fail("%v", err)
		return nil, nil, false
	}
	if fr.rep.LostEvents != 0 {
		res.fail("lost %d events on a 10-pair flood", fr.rep.LostEvents)
		return nil, nil, false
	}
	got := fr.p.reported()
	extra := counts{}
	for k, g := range got {
		w := want[k]
		if g[0] < w[0] {
			res.fail("%s: udstrace reported %d calls, allocount counted %d, nothing was lost", k, g[0], w[0])
		}
		if g[0] > w[0] {
			extra[k] = [2]uint64{g[0] - w[0], 0}
		}
	}
	for k, w := range want {
		if _, ok := got[k]; !ok {
			res.fail("%s: udstrace reported none, allocount counted %d", k, w[0])
		}
	}
	res.note("udstrace %s; allocount %s", formatCounts(got), formatCounts(want))
	if len(extra) > 0 {
		res.note("udstrace reports calls the program did not make: %s, and %d unmatched frees — glibc's frees of each exiting thread's tcache (tcache_thread_shutdown calls free internally); see the churn check", formatCounts(extra), fr.p.Unmatch)
	}
	res.note("non-heap: mmap %d, munmap %d, brk %d, exec and exit seen %v", fr.p.Mmap, fr.p.Munmap, fr.p.Brk, fr.p.Exe != "" && fr.p.Exited)
	return extra, fr.p, res.held == "yes"
}

func (e *env) traceFlood(bin string, count int64, name string, extra ...string) (*floodRun, error) {
	out := filepath.Join(e.work, "flood-"+name+".json")
	args := append([]string{"run", "--format", "json", "-o", out}, extra...)
	args = append(args, "--", bin, strconv.FormatInt(count, 10))
	u, err := e.startUd("flood-"+name, args, nil, false)
	if err != nil {
		return nil, err
	}
	code, sig, timedOut := u.wait(10 * time.Minute)
	if code != 0 || timedOut {
		return nil, fmt.Errorf("udstrace exit %d signal %v timed out %v: %s", code, sig, timedOut, u.lastLines(3))
	}
	rep, err := readReport(out)
	if err != nil {
		return nil, err
	}
	var hot int64
	for _, l := range strings.Split(u.log(), "\n") {
		if n, err := strconv.ParseInt(strings.TrimSpace(l), 10, 64); err == nil {
			hot = n
		}
	}
	if hot == 0 {
		return nil, fmt.Errorf("the flood printed no duration: %s", u.lastLines(3))
	}
	fr := &floodRun{hotNS: hot, rep: rep, u: u}
	for i := range rep.Processes {
		if filepath.Base(rep.Processes[i].Exe) == "flood" {
			fr.p = &rep.Processes[i]
		}
	}
	if fr.p == nil {
		return nil, fmt.Errorf("no flood process in the report (%d processes)", len(rep.Processes))
	}
	return fr, nil
}

// floodOnce traces one flood and checks that every call allocount counted was either reported or
// counted as lost.
func (e *env) floodOnce(bin string, count int64, what string, extra []string, beyond counts, baseProc *proc) *result {
	res := newResult("flood: "+what, fmt.Sprintf("%d threads × %d malloc/free pairs, run --format json", floodThreads, count))
	progress("flood: ground truth for %d pairs per thread (allocount.so)", count)
	truths, _, err := e.interpose([]string{bin, strconv.FormatInt(count, 10)})
	if err != nil || len(truths) != 1 {
		res.fail("ground truth: %v (%d count files)", err, len(truths))
		return res
	}
	var want counts
	for _, t := range truths {
		want = t.expected()
	}
	progress("flood: tracing %s", what)
	name := "default"
	if len(extra) > 0 {
		name = "tiny"
	}
	for k, b := range beyond { // what udstrace reports beyond the program's calls when nothing is lost
		w := want[k]
		w[0] += b[0]
		want[k] = w
	}
	fr, err := e.traceFlood(bin, count, name, extra...)
	if err != nil {
		res.fail("%v", err)
		return res
	}
	got := fr.p.reported()
	lost := fr.rep.LostDetail.RingBuffer + fr.rep.LostDetail.Other
	res.note("traced flood took %.1f s (%d ns per pair per thread); udstrace ran %s",
		float64(fr.hotNS)/1e9, fr.hotNS/count, fr.u.end.Sub(fr.u.begun).Round(100*time.Millisecond))
	res.note("report: lost_events %d (ring_buffer %d, other %d, stack_truncated %d not counted)",
		fr.rep.LostEvents, fr.rep.LostDetail.RingBuffer, fr.rep.LostDetail.Other, fr.rep.LostDetail.StackTruncated)
	if fr.rep.LostEvents != lost {
		res.fail("lost_events %d != ring_buffer %d + other %d", fr.rep.LostEvents, fr.rep.LostDetail.RingBuffer, fr.rep.LostDetail.Other)
	}
	var missing uint64
	var parts []string
	for k, w := range want {
		g := got[k]
		parts = append(parts, fmt.Sprintf("%s reported %d of %d", k, g[0], w[0]))
		if g[0] > w[0] {
			res.fail("%s: udstrace reported %d calls, more than the %d made", k, g[0], w[0])
			continue
		}
		missing += w[0] - g[0]
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			res.fail("%s: udstrace reported %d calls, allocount none", k, g[0])
		}
	}
	res.note("%s", strings.Join(sortedStrings(parts), "; "))
	nonHeap, why := nonHeapMissing(baseProc, fr.p)
	res.note("balance (allowing the baseline's %s): missing calls %d + missing non-heap events %d%s = %d; lost events %d; difference %d",
		formatCounts(beyond), missing, nonHeap, why, missing+nonHeap, lost, int64(lost)-int64(missing+nonHeap))
	if missing+nonHeap != lost {
		res.fail("reported + lost != made: %d calls and %d other events missing from the report, %d events counted as lost "+
			"(a positive difference may be executable-mapping events lost at start-up: the report does not count them)", missing, nonHeap, lost)
	}
	if len(fr.rep.Warnings) > 0 {
		res.note("warnings: %s", strings.Join(fr.rep.Warnings, " | "))
	}
	if !fr.p.Exited {
		res.fail("the flood's exit, 500 ms after its last call, was lost: the reader never drained the ring after the flood "+
			"(%d of %d malloc calls reported)", got["malloc"][0], want["malloc"][0])
	}
	if name == "tiny" && lost == 0 {
		res.fail("a 64 KiB ring buffer lost nothing: the loss path was not exercised")
	}
	if fr.rep.LostDetail.RingBuffer > 0 {
		// Heavy loss must lead the report: the first warning says what was lost and the remedy.
		if w := fr.rep.Warnings; len(w) == 0 || !strings.Contains(w[0], "ring buffer was full") || !strings.Contains(w[0], "--ring-size") {
			res.fail("JSON: %d events lost to the ring buffer, but the first warning (%q) does not say so with --ring-size", fr.rep.LostDetail.RingBuffer, first(w))
		}
	}
	if name == "tiny" {
		e.floodText(res, bin, count, extra)
	}
	return res
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// floodText traces the lossy flood again in text format: the loss must lead the text report (the
// line after the title, before any figure) and a warning line must name the remedy.
func (e *env) floodText(res *result, bin string, count int64, extra []string) {
	out := filepath.Join(e.work, "flood-tiny.txt")
	args := append([]string{"run", "--format", "text", "-o", out}, extra...)
	args = append(args, "--", bin, strconv.FormatInt(count, 10))
	u, err := e.startUd("flood-tiny-text", args, nil, false)
	if err != nil {
		res.fail("text run: %v", err)
		return
	}
	if code, sig, timedOut := u.wait(10 * time.Minute); code != 0 || timedOut {
		res.fail("text run: udstrace exit %d signal %v timed out %v: %s", code, sig, timedOut, u.lastLines(3))
		return
	}
	b, err := os.ReadFile(out)
	if err != nil {
		res.fail("text run: %v", err)
		return
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "*** ") || !strings.Contains(lines[1], "EVENTS LOST") {
		res.fail("text: the line after the title is %q, want the *** N EVENTS LOST banner", lines[min(1, len(lines)-1)])
	}
	warned := false
	for _, l := range lines {
		if strings.HasPrefix(l, "warning:") && strings.Contains(l, "ring buffer was full") && strings.Contains(l, "--ring-size") {
			warned = true
			break
		}
	}
	if !warned {
		res.fail("text: no warning line says the ring buffer was full and names --ring-size")
	} else {
		res.note("text: the loss banner leads the report and a warning names --ring-size")
	}
}

// nonHeapMissing counts the flood's other events that the lossless baseline had and this run lacks:
// memory syscalls, exec and exit (the program makes the same ones whatever its count).
func nonHeapMissing(base, p *proc) (uint64, string) {
	var n uint64
	var what []string
	for _, c := range []struct {
		name      string
		base, got uint64
	}{{"mmap", base.Mmap, p.Mmap}, {"munmap", base.Munmap, p.Munmap}, {"brk", base.Brk, p.Brk}} {
		if c.got < c.base {
			n += c.base - c.got
			what = append(what, fmt.Sprintf("%d %s", c.base-c.got, c.name))
		}
	}
	if p.Exe == "" {
		n++
		what = append(what, "exec")
	}
	if !p.Exited {
		n++
		what = append(what, "exit")
	}
	if len(what) == 0 {
		return 0, ""
	}
	return n, " (" + strings.Join(what, ", ") + ")"
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
