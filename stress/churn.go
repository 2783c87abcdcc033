package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// churnSrc changes under the tracer: it execs itself first (a new image for the traced PID), then
// dlopen()s libm, runs a thread that allocates while a second thread allocates and exits, forks a
// child that execs allocpattern (a new image) and one that allocates and exits. Every count is fixed,
// so allocount.so's count for each final image is the truth. No stdio: it would allocate.
const churnSrc = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int a_started, b_exited;
static void *volatile sink;

static void *thread_a(void *arg) {
	(void)arg;
	a_started = 1;
	for (int i = 0; i < 3000; i++) {
		if (i == 1500)
			while (!b_exited) /* B exits in the middle of A's allocations */
				sched_yield();
		void *p = malloc(100 + (size_t)(i % 50));
		sink = p;
		free(p);
	}
	void *q = calloc(10, 10);
	q = realloc(q, 1000);
	sink = q;
	free(q);
	return NULL;
}

static void *thread_b(void *arg) {
	(void)arg;
	for (int i = 0; i < 200; i++) {
		void *p = malloc(64);
		sink = p;
		free(p);
	}
	pthread_exit(NULL);
}

int main(int argc, char **argv) {
	if (argc == 2) { /* first image: become the second at once, before any allocation */
		char *args[] = {argv[0], "main", argv[1], NULL};
		execv("/proc/self/exe", args);
		return 126;
	}
	if (argc != 3 || strcmp(argv[1], "main") != 0)
		return 2;
	void *m = dlopen("libm.so.6", RTLD_NOW);
	if (m == NULL)
		return 3;
	double (*cosp)(double) = (double (*)(double))dlsym(m, "cos");
	volatile double c = cosp(0.5);
	(void)c;
	dlclose(m);

	pthread_t a, b;
	pthread_create(&a, NULL, thread_a, NULL);
	while (!a_started)
		sched_yield();
	pthread_create(&b, NULL, thread_b, NULL);
	pthread_join(b, NULL);
	b_exited = 1;
	pthread_join(a, NULL);

	pid_t ex = fork();
	if (ex == 0) {
		char *args[] = {argv[2], "4", NULL};
		execv(argv[2], args);
		_exit(127);
	}
	int st;
	waitpid(ex, &st, 0);
	pid_t plain = fork();
	if (plain == 0) {
		for (int i = 0; i < 50; i++) {
			void *p = malloc(4096);
			sink = p;
			free(p);
		}
		exit(0);
	}
	waitpid(plain, &st, 0);
	char line[128];
	int n = snprintf(line, sizeof(line), "churn: main=%d exec=%d plain=%d\n", (int)getpid(), (int)ex, (int)plain);
	write(1, line, (size_t)n);
	return 0;
}
`

var churnLine = regexp.MustCompile(`churn: main=(\d+) exec=(\d+) plain=(\d+)`)

func churnPIDs(out string) (map[string]int, bool) {
	m := churnLine.FindStringSubmatch(out)
	if m == nil {
		return nil, false
	}
	pids := map[string]int{}
	for i, role := range []string{"main", "exec", "plain"} {
		pids[role], _ = strconv.Atoi(m[i+1])
	}
	return pids, true
}

// checkChurn traces the churn twice: on the machine as it is, and with every CPU kept busy by a
// spinning thread beside it (the reader competes for CPU). Both must be exact and lose nothing: the
// churn's ~7,000 events (~400 KB) cannot fill a 16 MiB ring whose stack copies may take only half,
// however late the reader drains it, so no loss is tolerated under load either.
func checkChurn(e *env) *result {
	res := newResult("target churn", "exec of self, dlopen(libm), thread exit mid-allocation, fork+exec, fork+exit; idle, then with a spinning thread per CPU")
	progress("churn: %s", res.tried)
	bin, err := e.compile("churn", churnSrc, "-pthread", "-ldl")
	if err != nil {
		res.fail("%v", err)
		return res
	}
	ap := filepath.Join(e.bin, "allocpattern")
	truths, out, err := e.interpose([]string{bin, ap})
	if err != nil {
		res.fail("ground truth: %v", err)
		return res
	}
	tpids, ok := churnPIDs(out)
	if !ok {
		res.fail("ground-truth run printed no PIDs: %q", out)
		return res
	}
	e.churnOnce(res, bin, ap, truths, tpids, "")
	stop := startHog(runtime.NumCPU())
	e.churnOnce(res, bin, ap, truths, tpids, "loaded: ")
	stop()
	return res
}

// churnOnce traces the churn once and checks it against the ground truth; what notes and failures
// say starts with label.
func (e *env) churnOnce(all *result, bin, ap string, truths map[int]truth, tpids map[string]int, label string) {
	res := &labelled{all, label}
	jsonOut := filepath.Join(e.work, "churn.json")
	u, err := e.startUd("churn", []string{"run", "--format", "json", "-o", jsonOut, "--", bin, ap}, nil, false)
	if err != nil {
		res.fail("%v", err)
		return
	}
	code, sig, timedOut := u.wait(3 * time.Minute)
	if code != 0 || timedOut {
		res.fail("udstrace exit %d signal %v timed out %v: %s", code, sig, timedOut, u.lastLines(3))
		return
	}
	upids, ok := churnPIDs(u.log())
	if !ok {
		res.fail("traced run printed no PIDs: %s", u.lastLines(3))
		return
	}
	rep, err := readReport(jsonOut)
	if err != nil {
		res.fail("%v", err)
		return
	}
	if rep.LostEvents != 0 {
		res.fail("lost %d events (ring %d, other %d)", rep.LostEvents, rep.LostDetail.RingBuffer, rep.LostDetail.Other)
	}
	if len(rep.Processes) != 3 {
		res.fail("report has %d processes, want 3 (main, its exec'ing child, its plain child)", len(rep.Processes))
	}
	for _, role := range []string{"main", "exec", "plain"} {
		p := rep.byPID(uint32(upids[role]))
		t, ok := truths[tpids[role]]
		if p == nil || !ok {
			res.fail("%s: no process %d in the report (%v) or no ground truth for %d", role, upids[role], p != nil, tpids[role])
			continue
		}
		got, want := p.reported(), t.expected()
		d := diffCounts(got, want)
		// calloc's bytes differ by design: allocount.so's own TLS makes each new thread's TLS
		// block (calloc'd by pthread_create) bigger under the interposer than without it.
		d = dropCallocBytes(d, got, want)
		// Frees glibc makes of its own memory (a dying thread's tcache) bypass the interposer: the
		// report must name each one as an unmatched free from inside libc.
		if inLibc, where := rep.libcFrees(p.PID); inLibc > 0 && got["free"][0] == want["free"][0]+inLibc && p.Unmatch == inLibc {
			res.note("%s: %d frees from inside libc that the interposer cannot see, all unmatched and named: %s", role, inLibc, strings.Join(where, ", "))
			got["free"] = want["free"]
			d = diffCounts(got, want)
			d = dropCallocBytes(d, got, want)
		}
		if len(d) > 0 {
			res.fail("%s (pid %d, %s): %s; unmatched frees %d", role, p.PID, filepath.Base(p.Exe), strings.Join(d, "; "), p.Unmatch)
		} else {
			res.note("%s (pid %d, %s): exact: %s", role, p.PID, filepath.Base(p.Exe), formatCounts(got))
		}
		if !p.Exited || p.ExitCode == nil || *p.ExitCode != 0 {
			res.fail("%s: exited %v with code %v, want a recorded exit 0", role, p.Exited, p.ExitCode)
		}
	}
	if p := rep.byPID(uint32(upids["exec"])); p != nil && filepath.Base(p.Exe) != "allocpattern" {
		res.fail("the exec'ing child's image is %q, want allocpattern", p.Exe)
	}
	for _, st := range rep.Sites {
		for _, f := range st.Stack {
			if f.Module == "" {
				res.fail("pid %d: a site with an unresolved frame %s: every image, library and dlopen'd object must be symbolized", st.PID, f.Symbol)
				break
			}
		}
	}
	for _, w := range rep.Warnings {
		res.note("warning: %s", w)
		lw := strings.ToLower(w)
		if strings.Contains(lw, "stale") || strings.Contains(lw, "discarded") || strings.Contains(lw, "lost") || strings.Contains(lw, "no symbols") {
			res.fail("warning about stale or lost state: %s", w)
		}
	}
}

// dropCallocBytes removes a calloc difference that is only in bytes.
func dropCallocBytes(d []string, got, want counts) []string {
	if got["calloc"][0] != want["calloc"][0] {
		return d
	}
	var out []string
	for _, s := range d {
		if !strings.HasPrefix(s, "calloc:") {
			out = append(out, s)
		}
	}
	return out
}

// labelled prefixes a result's notes and failures, to tell the runs of one check apart.
type labelled struct {
	r     *result
	label string
}

func (l *labelled) fail(format string, args ...any) {
	l.r.fail("%s%s", l.label, fmt.Sprintf(format, args...))
}
func (l *labelled) note(format string, args ...any) {
	l.r.note("%s%s", l.label, fmt.Sprintf(format, args...))
}
