package session

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// threadNamesSrc: the leader starts a thread that names itself zzthread and starts two more,
// which inherit that name; three allocate from functions of their own, and the two from one call
// site of a function they share; then the leader renames itself with prctl and exits while the
// threads sleep. It prints its pid and the threads' tids.
const threadNamesSrc = `#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

static sem_t ready;
static pid_t t1, t2, t3;
static void *volatile sink;

__attribute__((noinline)) static void shared_alloc(void) { sink = malloc(11); }
__attribute__((noinline)) static void t1_alloc(void) { sink = malloc(21); }
__attribute__((noinline)) static void t2_alloc(void) { sink = malloc(31); }
__attribute__((noinline)) static void main_alloc(void) { sink = malloc(41); }

static void *pooled(void *a) {
	if (a) {
		t2 = gettid();
		for (int i = 0; i < 3; i++) t2_alloc();
	} else {
		t3 = gettid();
	}
	shared_alloc();
	sem_post(&ready);
	sleep(30);
	return 0;
}

static void *first(void *a) {
	(void)a;
	pthread_setname_np(pthread_self(), "zzthread");
	t1 = gettid();
	for (int i = 0; i < 7; i++) t1_alloc();
	pthread_t th;
	pthread_create(&th, 0, pooled, &th);
	pthread_create(&th, 0, pooled, 0);
	sleep(30);
	return 0;
}

int main(void) {
	sem_init(&ready, 0, 0);
	pthread_t th;
	pthread_create(&th, 0, first, 0);
	sem_wait(&ready);
	sem_wait(&ready);
	for (int i = 0; i < 5; i++) main_alloc();
	prctl(PR_SET_NAME, "zzlead");
	printf("%d %d %d %d\n", getpid(), t1, t2, t3);
	fflush(stdout);
	exit(0);
}
`

// TestThreadNames: a process whose threads outlive its leader's exit is named by its leader (its
// latest name, set by prctl), not by the last thread to exit; each site one thread called says
// which (tid, name: set by pthread_setname_np, or inherited from the thread that created it), and
// a site two threads called says two. The oracle is the program: it prints its tids.
func TestThreadNames(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "threadnames", threadNamesSrc, "-pthread")
	var out bytes.Buffer
	o := testOptions(t)
	o.Command, o.Stdout = []string{bin}, &out
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var pid, t1, t2, t3 uint32
	if _, err := fmt.Sscan(out.String(), &pid, &t1, &t2, &t3); err != nil {
		t.Fatalf("the program printed %q: %v", out.String(), err)
	}
	v, _ := decodeView(t, rep)
	for _, p := range v.Processes {
		if p.PID == pid && p.Comm != "zzlead" {
			t.Errorf("processes[]: pid %d comm %q, want the leader's latest name zzlead", pid, p.Comm)
		}
	}
	for _, c := range []struct {
		fn      string
		count   uint64
		tid     uint32
		thread  string
		threads int
	}{
		{"t1_alloc", 7, t1, "zzthread", 1},
		{"t2_alloc", 3, t2, "zzthread", 1},
		{"main_alloc", 5, pid, "zzlead", 1},
		{"shared_alloc", 2, 0, "", 2},
	} {
		var n uint64 // a loop the compiler unrolled makes one site per call
		for _, s := range v.Sites {
			if s.PID != pid || s.Kind != "malloc" || !siteHasFunction(s.Stack, c.fn) {
				continue
			}
			n += s.Count
			if s.Comm != "zzlead" {
				t.Errorf("%s: site comm %q, want zzlead", c.fn, s.Comm)
			}
			if s.TID != c.tid || s.Thread != c.thread || s.Threads != c.threads {
				t.Errorf("%s: tid %d thread %q threads %d, want %d %q %d",
					c.fn, s.TID, s.Thread, s.Threads, c.tid, c.thread, c.threads)
			}
		}
		if n != c.count {
			t.Errorf("%s: %d mallocs at its sites, want %d", c.fn, n, c.count)
		}
	}
	if t3 == 0 {
		t.Error("the third thread's tid was not printed")
	}
}

// siteHasFunction reports whether a site's stack passes through function fn.
func siteHasFunction(stack []viewFrame, fn string) bool {
	for _, f := range stack {
		if strings.HasPrefix(f.Function, fn) {
			return true
		}
	}
	return false
}

// TestCommScopeIsTheProcess: --comm selects processes by their name, the leader's: the calls of a
// thread that renamed itself (pthread_setname_np) are traced with the rest of its process.
func TestCommScopeIsTheProcess(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "threadnames", threadNamesSrc, "-pthread")
	o := testOptions(t)
	o.Comm = "threadnames"
	v := traceWhile(t, o, []string{bin})
	var n uint64
	for _, s := range v.Sites {
		if s.Kind == "malloc" && siteHasFunction(s.Stack, "t1_alloc") {
			n += s.Count
			if s.Thread != "zzthread" {
				t.Errorf("t1_alloc: thread %q, want zzthread", s.Thread)
			}
		}
	}
	if n != 7 {
		t.Errorf("--comm threadnames: %d mallocs under t1_alloc (thread zzthread), want 7", n)
	}
}

// TestRedisNamedByItsLeader: redis-server's bio threads name themselves (bio_close_file,
// bio_aof_fsync, bio_lazy_free) and are alive when it exits: the process and its sites are still
// redis-server, and the sites its main thread called say so.
func TestRedisNamedByItsLeader(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s runs this test: install it (apt-get install redis-server)", tool)
		}
	}
	port := "16399"
	go func() { // once it answers, one command, then shut it down
		for i := 0; i < 200; i++ {
			if out, _ := exec.Command("redis-cli", "-p", port, "ping").Output(); strings.TrimSpace(string(out)) == "PONG" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = exec.Command("redis-cli", "-p", port, "set", "k", "v").Run()
		_ = exec.Command("redis-cli", "-p", port, "shutdown", "nosave").Run()
	}()
	o := testOptions(t)
	o.Command = []string{"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}
	o.Stdout = io.Discard
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Processes) != 1 || rep.Processes[0].Comm != "redis-server" {
		t.Fatalf("processes %+v, want one, redis-server", rep.Processes)
	}
	pid, main := rep.Processes[0].PID, 0
	for _, s := range rep.Sites {
		if s.Comm != "redis-server" {
			t.Errorf("site %d: comm %q, want redis-server", s.ID, s.Comm)
		}
		if s.TID == pid {
			main++
			if s.Thread != "redis-server" {
				t.Errorf("site %d of the main thread: thread %q, want redis-server", s.ID, s.Thread)
			}
		}
	}
	if main == 0 {
		t.Error("no site of redis-server's main thread")
	}
}
