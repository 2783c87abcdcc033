package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/udstrace/udstrace/internal/testenv"
)

// holdC allocates argv[1] blocks of 1000+i bytes (i from 0), after argv[2] ms if given (argv[2]
// "-": once a byte arrives on stdin), says
// "ready" on stdout with write(2) (no stdio: its buffer would be one more block) and holds them
// until killed.
const holdC = `#include <stdlib.h>
#include <unistd.h>
static void *volatile keep[100000];
int main(int argc, char **argv) {
	long n = atol(argv[1]);
	char go;
	if (argc > 2 && argv[2][0] == '-')
		(void)!read(0, &go, 1);
	else if (argc > 2)
		usleep(atol(argv[2]) * 1000);
	for (long i = 0; i < n; i++)
		keep[i] = malloc(1000 + i);
	write(1, "ready\n", 6);
	for (;;)
		pause();
}
`

// holdBlocks and holdBytes are what holdC keeps with its argument holdBlocks.
const holdBlocks = 200
const holdBytes = holdBlocks*1000 + holdBlocks*(holdBlocks-1)/2

// buildHold compiles holdC as dir/udshold (its comm, for --comm).
func buildHold(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, bin := filepath.Join(dir, "hold.c"), filepath.Join(dir, "udshold")
	if err := os.WriteFile(src, []byte(holdC), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-O1", "-g", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// served is a udstrace --serve running in a test, and the held program it traces.
type served struct {
	addr   string // host:port it serves on
	pid    int    // the held program's
	report string // the JSON report written when it stops
	stop   func() string
}

// startServed runs udstrace trace --comm udshold --serve 127.0.0.1:0 --interval 1s -f json, waits
// for its JSON log lines "serving" (the address) and "tracing", then starts the held program, in
// the way launch says (nil: as it is). extra are more udstrace flags.
func startServed(t *testing.T, launch func(hold string, args ...string) *exec.Cmd, extra ...string) *served {
	t.Helper()
	bin, hold := buildCLI(t), buildHold(t)
	out := filepath.Join(t.TempDir(), "final.json")
	cmd := exec.Command(bin, append([]string{"trace", "--comm", "udshold", "--serve", "127.0.0.1:0", "--interval", "1s", "-f", "json", "-o", out}, extra...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := &strings.Builder{}
	done := make(chan struct{})
	lines := make(chan map[string]any, 16)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(logs, sc.Text())
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				select {
				case lines <- l:
				default:
				}
			}
		}
	}()
	s := &served{report: out}
	stopped := false
	s.stop = func() string {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGINT)
			<-done
			if err := cmd.Wait(); err != nil {
				t.Errorf("udstrace --serve: %v\n%s", err, logs)
			}
		}
		return logs.String()
	}
	t.Cleanup(func() { s.stop() })
	for tracing := false; s.addr == "" || !tracing; {
		select {
		case l := <-lines:
			if l["level"] == nil || l["msg"] == nil {
				t.Fatalf("a log line is not slog JSON: %v", l)
			}
			switch l["msg"] {
			case "serving":
				s.addr, _ = l["addr"].(string)
			case "tracing":
				tracing = true
			}
		case <-done:
			t.Fatalf("udstrace --serve ended before tracing:\n%s", logs)
		case <-time.After(2 * time.Minute):
			t.Fatalf("udstrace --serve never said serving and tracing:\n%s", logs)
		}
	}
	if launch == nil {
		launch = exec.Command
	}
	h := launch(hold, strconv.Itoa(holdBlocks))
	hout, err := h.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Process.Kill(); h.Wait() })
	if line, _ := bufio.NewReader(hout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("udshold said %q", line)
	}
	s.pid = h.Process.Pid
	return s
}

// freePort is a port nobody listens on at the time of asking.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// needTool finds a test tool, skipping without it (failing under CI=true: make deps installs it).
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is this test's oracle: install it (apt-get install %s; make deps)", name, pkg)
		}
		t.Skipf("%s not installed (apt-get install %s)", name, pkg)
	}
	return p
}

// TestServePrometheus: a real Prometheus scraping udstrace trace --serve reads the held program's
// outstanding heap bytes and blocks exactly as it allocated them; promtool accepts the
// exposition; the JSON report written when udstrace stops has, for the process, the outstanding
// bytes Prometheus has summed over the sources (heap, and ld.so's anonymous mappings).
func TestServePrometheus(t *testing.T) {
	testenv.NeedRoot(t)
	prom := needTool(t, "prometheus", "prometheus")
	promtool := needTool(t, "promtool", "prometheus")
	s := startServed(t, nil)

	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exposition, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(string(exposition))
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: udstrace\n    static_configs:\n      - targets: [%q]\n", s.addr)), 0o644)
	pcmd := exec.Command(prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	plog := &strings.Builder{}
	pcmd.Stdout, pcmd.Stderr = plog, plog
	if err := pcmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pcmd.Process.Kill(); pcmd.Wait() })

	query := func(q string) (float64, bool) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", port, url.QueryEscape(q)))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
			return 0, false
		}
		str, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		return v, err == nil
	}
	sel := fmt.Sprintf(`{comm="udshold",pid="%d",job="udstrace",source="heap"}`, s.pid)
	var bytes, blocks float64
	ok := false
	// Bounded: Prometheus starts, scrapes every second, udstrace cuts every second.
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		var ok1, ok2 bool
		bytes, ok1 = query("udstrace_outstanding_bytes" + sel)
		blocks, ok2 = query("udstrace_outstanding_blocks" + sel)
		if ok1 && ok2 && bytes == holdBytes && blocks == holdBlocks {
			ok = true
			break
		}
	}
	if !ok {
		t.Fatalf("Prometheus never saw %d outstanding bytes in %d blocks for udshold (pid %d): last %v bytes, %v blocks\nprometheus:\n%s\nudstrace:\n%s",
			holdBytes, holdBlocks, s.pid, bytes, blocks, tail(plog.String()), s.stop())
	}
	if calls, ok := query(`udstrace_heap_calls_total{kind="malloc",comm="udshold"}`); !ok || calls != holdBlocks {
		t.Errorf("udstrace_heap_calls_total{kind=malloc} = %v (found %v), want %d", calls, ok, holdBlocks)
	}
	if v, ok := query(`process_resident_memory_bytes{job="udstrace"}`); !ok || v <= 0 {
		t.Errorf("udstrace's own RSS not scraped: %v %v", v, ok)
	}
	all, ok := query(fmt.Sprintf(`sum(udstrace_outstanding_bytes{pid="%d"})`, s.pid))
	if !ok {
		t.Fatal("no sum of udstrace_outstanding_bytes")
	}
	t.Logf("Prometheus: udshold pid %d outstanding heap %v bytes in %v blocks, %v bytes from every source", s.pid, bytes, blocks, all)

	logs := s.stop()
	rep := readServedReport(t, s.report)
	found := false
	for _, p := range rep.Processes {
		found = found || p.PID == s.pid
		if p.PID == s.pid && float64(p.OutstandingBytes) != all {
			t.Errorf("final JSON report: udshold outstanding %d bytes, Prometheus's sum over sources %v", p.OutstandingBytes, all)
		}
	}
	if !found {
		t.Errorf("final JSON report has no udshold pid %d", s.pid)
	}
	if !strings.Contains(logs, `"msg":"stopped serving"`) {
		t.Errorf("no stopped serving log line:\n%s", logs)
	}
}

// servedReport is what these tests read of the final JSON report.
type servedReport struct {
	Processes []struct {
		PID              int    `json:"pid"`
		Comm             string `json:"comm"`
		OutstandingBytes uint64 `json:"outstanding_bytes"`
		OutstandingCount uint64 `json:"outstanding_count"`
	} `json:"processes"`
}

func readServedReport(t *testing.T, path string) servedReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no report: %v", err)
	}
	var r servedReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("report %s: %v", path, err)
	}
	return r
}

// TestServePprof: go tool pprof -top reads the cumulative heap profile over HTTP and finds the
// held program's main holding every byte it allocated; the interval profile comes to show main
// holding them with nothing allocated in that interval.
func TestServePprof(t *testing.T) {
	testenv.NeedRoot(t)
	s := startServed(t, nil)
	base := "http://" + s.addr
	pprofTop := func(index string) string {
		var out string
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			cmd := exec.Command("go", "tool", "pprof", "-top", "-sample_index="+index, "-unit=B", fmt.Sprintf("-tagfocus=pid=%d", s.pid), base+"/debug/pprof/heap")
			cmd.Env = append(os.Environ(), "PPROF_TMPDIR="+t.TempDir())
			b, err := cmd.CombinedOutput()
			out = string(b)
			if err == nil && topHas(out, fmt.Sprintf("%dB", holdBytes), "main") {
				return out
			}
		}
		t.Fatalf("go tool pprof -top -sample_index=%s never showed main with %d bytes (cumulative):\n%s", index, holdBytes, out)
		return ""
	}
	t.Logf("inuse_space:\n%s", pprofTop("inuse_space"))
	pprofTop("alloc_space")

	var seen string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := http.Get(base + "/debug/pprof/heap/interval")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			seen = resp.Status
			continue
		}
		p, err := profile.ParseData(b)
		if err != nil {
			t.Fatalf("interval profile: %v", err)
		}
		inuse, alloc := mainValues(p, s.pid)
		seen = fmt.Sprintf("main inuse %d alloc %d", inuse, alloc)
		if inuse == holdBytes && alloc == 0 {
			return
		}
	}
	t.Fatalf("the interval profile never showed main holding %d bytes and allocating none in the interval: last %s", holdBytes, seen)
}

// topHas reports whether a pprof -top line (flat flat% sum% cum cum% name) gives function fn the
// cumulative value.
func topHas(top, value, fn string) bool {
	for _, l := range strings.Split(top, "\n") {
		f := strings.Fields(l)
		if len(f) == 6 && f[3] == value && f[5] == fn {
			return true
		}
	}
	return false
}

// mainValues sums the inuse_space and alloc_space of pid's samples whose stack has main.
func mainValues(p *profile.Profile, pid int) (inuse, alloc int64) {
	idx := map[string]int{}
	for i, st := range p.SampleType {
		idx[st.Type] = i
	}
	for _, s := range p.Sample {
		if len(s.NumLabel["pid"]) == 0 || s.NumLabel["pid"][0] != int64(pid) {
			continue
		}
		for _, l := range s.Location {
			for _, ln := range l.Line {
				if ln.Function != nil && ln.Function.Name == "main" {
					inuse += s.Value[idx["inuse_space"]]
					alloc += s.Value[idx["alloc_space"]]
				}
			}
		}
	}
	return inuse, alloc
}

// TestServeAddressInUse: an address udstrace cannot listen on fails at once (exit 125), before tracing.
func TestServeAddressInUse(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, stderr, code := runCLI(t, bin, "trace", "--serve", l.Addr().String(), "--duration", "30s")
	if code != exitFailure || !strings.Contains(stderr, "listening on "+l.Addr().String()) || strings.Contains(stderr, `"msg":"tracing"`) {
		t.Errorf("exit %d, stderr %q: want exit %d saying listening on %s failed, before tracing", code, stderr, exitFailure, l.Addr())
	}
}
