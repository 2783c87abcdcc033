package main

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// paced allocates at a fixed rate, paced by absolute deadlines so a loaded machine makes it late
// but not slower overall: every millisecond, argv[2] malloc/free pairs through one of 64 call
// chains (64 sites), for argv[1] seconds; every argv[3] milliseconds (0: never) it also keeps a
// 64 KiB block, so its outstanding bytes grow steadily.
const pacedC = `#include <stdlib.h>
#include <time.h>
#define CHAIN(n) __attribute__((noinline)) void *f##n(size_t s) { void *p = malloc(s + n); __asm__ volatile("" :: "r"(p)); return p; }
#define C8(a) CHAIN(a##0) CHAIN(a##1) CHAIN(a##2) CHAIN(a##3) CHAIN(a##4) CHAIN(a##5) CHAIN(a##6) CHAIN(a##7)
C8(1) C8(2) C8(3) C8(4) C8(5) C8(6) C8(7) C8(8)
#define P8(a) f##a##0, f##a##1, f##a##2, f##a##3, f##a##4, f##a##5, f##a##6, f##a##7
static void *(*fs[64])(size_t) = { P8(1), P8(2), P8(3), P8(4), P8(5), P8(6), P8(7), P8(8) };
__attribute__((noinline)) void *keep(size_t s) { void *p = malloc(s); __asm__ volatile("" :: "r"(p)); return p; }
int main(int argc, char **argv) {
	long secs = atol(argv[1]), per = atol(argv[2]), every = atol(argv[3]);
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	for (long ms = 0, i = 0; ms < secs * 1000; ms++) {
		for (long j = 0; j < per; j++, i++)
			free(fs[i % 64](16 + i % 100));
		if (every > 0 && ms % every == 0)
			keep(64 << 10);
		t.tv_nsec += 1000000;
		if (t.tv_nsec >= 1000000000) { t.tv_nsec -= 1000000000; t.tv_sec++; }
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, 0);
	}
	return 0;
}
`

// buildPaced compiles pacedC into dir.
func buildPaced(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "paced.c"), filepath.Join(dir, "paced")
	if err := os.WriteFile(src, []byte(pacedC), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// TestNDJSONAtTenThousandPerSecond: --format ndjson --interval 1s on a program making 10,000
// allocations a second for 10 s loses no event, every snapshot is on time (within 10% of the
// interval: a snapshot must not wait on the event reader or symbolize thousands of stacks), and
// the last line has every allocation the program made.
func TestNDJSONAtTenThousandPerSecond(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	paced := buildPaced(t)
	out := filepath.Join(t.TempDir(), "live.ndjson")
	_, stderr, code := runCLI(t, bin, "run", "-f", "ndjson", "--interval", "1s", "-o", out, "--", paced, "10", "10", "0")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type line struct {
		Seq             int     `json:"seq"`
		IntervalSeconds float64 `json:"interval_seconds"`
		LostEvents      uint64  `json:"lost_events"`
		Processes       []struct {
			Comm        string `json:"comm"`
			Allocations uint64 `json:"allocations"`
		} `json:"processes"`
	}
	var lines []line
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not JSON: %v: %s", err, sc.Bytes())
		}
		lines = append(lines, l)
	}
	if len(lines) < 10 {
		t.Fatalf("%d lines for a 10 s run at 1 s", len(lines))
	}
	var late []string
	for i, l := range lines {
		if l.LostEvents != 0 {
			t.Errorf("line %d: %d events lost", l.Seq, l.LostEvents)
		}
		if i < len(lines)-1 && math.Abs(l.IntervalSeconds-1) > 0.1 { // the last one ends with the trace
			late = append(late, strconv.FormatFloat(l.IntervalSeconds, 'f', 3, 64))
		}
	}
	if len(late) > 0 {
		t.Errorf("intervals off by more than 10%% of 1 s: %s", strings.Join(late, ", "))
	}
	var allocs uint64
	for _, p := range lines[len(lines)-1].Processes {
		if p.Comm == "paced" {
			allocs += p.Allocations
		}
	}
	if allocs < 100000 {
		t.Errorf("last line: %d allocations, want the program's 100,000 (and its loader's)", allocs)
	}
}

// TestTopSortKeys: top ranks by the key asked for. 64 sites make 10 calls a millisecond between
// them and free every block (most calls, no growth); another keeps a 64 KiB block every 10 ms
// (most bytes, most outstanding, steady growth).
// The view's first row must be the one each key picks; count mode refuses the keys it cannot rank.
func TestTopSortKeys(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	paced := buildPaced(t)
	for key, want := range map[string]string{"count": "paced!f", "bytes": "paced!keep", "outstanding": "paced!keep", "growth": "paced!keep"} {
		cmd := exec.Command(paced, "5", "10", "10")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := runCLI(t, bin, "top", "--pid", strconv.Itoa(cmd.Process.Pid), "--sort", key, "--duration", "3s", "--interval", "1s")
		cmd.Wait()
		if code != exitOK {
			t.Fatalf("top --sort %s: exit %d: %s", key, code, stderr)
		}
		frames := strings.Split(stdout, "\x1b[H\x1b[2J")
		last := frames[len(frames)-1]
		rows := strings.Split(strings.TrimSpace(last), "\n")
		if len(rows) < 4 || !strings.Contains(rows[0], "by "+key) {
			t.Fatalf("top --sort %s: frame %q", key, last)
		}
		if first := rows[3]; !strings.Contains(first, want) { // title, blank, header, first row
			t.Errorf("top --sort %s: first row %q, want %s", key, first, want)
		}
	}
	_, stderr, code := runCLI(t, bin, "top", "--mode", "count", "--sort", "growth")
	if code != exitUsage || !strings.Contains(stderr, "count mode traces no frees") {
		t.Errorf("count mode --sort growth: exit %d, %q", code, stderr)
	}
}
