package session

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// TestIntervalSnapshots: ndjson's source, a report every interval while the command runs.
func TestIntervalSnapshots(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	o := testOptions(t)
	o.Command = []string{"/bin/sh", "-c", bins.AllocPattern + " 1; sleep 1; " + bins.AllocPattern + " 1; sleep 1"}
	var mu sync.Mutex
	var buf bytes.Buffer
	iv := report.NewIntervals(5)
	o.Interval = 300 * time.Millisecond
	o.OnInterval = func(r *report.Report) {
		mu.Lock()
		defer mu.Unlock()
		iv.Next(r, time.Now()).WriteTo(&buf)
	}
	if _, err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	if len(lines) < 4 {
		t.Fatalf("%d interval lines in 2 s at 300 ms, want ≥ 4", len(lines))
	}
	var grew bool
	var last float64
	for _, l := range lines {
		var doc map[string]any
		if err := json.Unmarshal(l, &doc); err != nil {
			t.Fatalf("interval line is not JSON: %v: %s", err, l)
		}
		if doc["schema"] != report.IntervalSchema {
			t.Errorf("schema %v", doc["schema"])
		}
		procs, _ := doc["processes"].([]any)
		total := 0.0
		for _, p := range procs {
			total += p.(map[string]any)["allocations"].(float64)
		}
		grew = grew || total > last && last > 0
		last = total
	}
	if !grew {
		t.Errorf("allocations never grew between intervals")
	}
}

// TestCgroupFilter: trace --cgroup sees only processes of that cgroup, filtered in the kernel.
func TestCgroupFilter(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	root, err := Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(root, "udstrace-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("creating a cgroup v2 group: %v", err)
	}
	defer os.Remove(cg)
	o := testOptions(t)
	o.Cgroup = filepath.Base(cg)
	v := traceWhile(t, o,
		[]string{"/bin/sh", "-c", "echo $$ > " + cg + "/cgroup.procs && exec " + bins.AllocPattern + " 1"},
		[]string{bins.AllocPattern, "1"}, // outside the cgroup: must not appear
	)
	n := 0
	for _, p := range v.Processes {
		if p.Comm == "allocpattern" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d allocpattern processes traced, want only the one in the cgroup", n)
	}
}

// busySrc allocates for about a second and a half, then exits.
const busySrc = `#include <stdlib.h>
#include <time.h>
static void *volatile sink;
int main(void) {
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do {
		for (int i = 0; i < 1000; i++) { void *p = malloc(256); sink = p; free(p); }
		clock_gettime(CLOCK_MONOTONIC, &b);
	} while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 1500);
	return 0;
}
`

// TestIntervalSnapshotsSampled: with sampling, a running process's exact totals live in the kernel
// until it exits; snapshots must show them while it runs.
func TestIntervalSnapshotsSampled(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "busy", busySrc)
	o := testOptions(t)
	o.Command, o.SampleBytes = []string{bin}, 65536
	var mu sync.Mutex
	var running []uint64 // allocations of the still-running process, per snapshot
	o.Interval = 300 * time.Millisecond
	o.OnInterval = func(r *report.Report) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range r.Processes {
			if p.Comm == "busy" && !p.Exited {
				running = append(running, p.HeapByKind["malloc"].Calls)
			}
		}
	}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	final := rep.Processes[0].HeapByKind["malloc"].Calls
	if len(running) < 2 || running[len(running)-1] <= running[0] || running[len(running)-1] > final {
		t.Errorf("malloc calls seen while running %v, final %d: want them growing and at most the final count", running, final)
	}
}
