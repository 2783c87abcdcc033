package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/udstrace/udstrace/internal/testenv"
)

// collectorConfig is the test collector's configuration: OTLP/HTTP in on %[1]s, contrib's file
// exporter out to %[2]s as JSON lines, one profiles pipeline between them; the collector's own
// telemetry is off so that it listens on no port of its own.
const collectorConfig = `receivers:
  otlp:
    protocols:
      http:
        endpoint: %[1]s
exporters:
  file:
    path: %[2]s
    format: json
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    profiles:
      receivers: [otlp]
      exporters: [file]
`

// startCollector builds the tests' OpenTelemetry Collector (testdata/otelcol: a real collector
// with the OTLP receiver and contrib's file exporter), runs it with profiles enabled by its
// feature gate on a free 127.0.0.1 port, and waits until it accepts connections; it returns its
// endpoint, the file its file exporter writes, and a stop that shuts it down gracefully (the
// file exporter flushes its buffer then).
func startCollector(t *testing.T) (endpoint, out string, stop func()) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "otelcol")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "testdata/otelcol"
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test collector (its modules come from the module proxy): %v\n%s", err, b)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	out = filepath.Join(dir, "profiles.jsonl")
	cfg := filepath.Join(dir, "otelcol.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, collectorConfig, addr, out), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", "file:"+cfg, "--feature-gates", "service.profilesSupport")
	logs := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("the collector exited (%v):\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the collector does not listen on %s:\n%s", addr, logs)
		}
	}
	return "http://" + addr, out, stop
}

// otlpFigures are one process's totals in one OTLP request, by sample type.
type otlpFigures struct {
	attrs  map[string]any
	values map[string]int64
}

// readOTLP reads the file exporter's output (one OTLP JSON object per line, a request each): per
// request, the figures of the resource with process.pid pid. A last line without its newline is
// still being written and is left for the next read.
func readOTLP(t *testing.T, path string, pid int) []otlpFigures {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []otlpFigures
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	} else {
		b = nil
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		pd, err := (&pprofile.JSONUnmarshaler{}).UnmarshalProfiles(line)
		if err != nil {
			t.Fatalf("the collector's output does not parse as OTLP profiles: %v", err)
		}
		strs := pd.Dictionary().StringTable()
		for _, rp := range pd.ResourceProfiles().All() {
			attrs := rp.Resource().Attributes().AsRaw()
			if p, _ := attrs["process.pid"].(int64); int(p) != pid {
				continue
			}
			f := otlpFigures{attrs: attrs, values: map[string]int64{}}
			for _, sp := range rp.ScopeProfiles().All() {
				for _, p := range sp.Profiles().All() {
					typ := strs.At(int(p.SampleType().TypeStrindex()))
					for _, s := range p.Samples().All() {
						for _, v := range s.Values().All() {
							f.values[typ] += v
						}
					}
				}
			}
			out = append(out, f)
		}
	}
	return out
}

// TestOTLPExport: udstrace --otlp-endpoint posts each interval's profile to a real
// OpenTelemetry Collector (OTLP receiver to file exporter, in a profiles pipeline); what the file
// exporter wrote is checked: the held program's resource carries its pid, executable name and
// host name; its inuse_space in the last request is the outstanding bytes of the JSON
// report udstrace writes when it stops, and its alloc_objects and alloc_space over all the
// requests (the intervals) add up to that report's allocations and allocated bytes.
func TestOTLPExport(t *testing.T) {
	testenv.NeedRoot(t)
	endpoint, out, stopCollector := startCollector(t)
	s := startServed(t, nil, "--otlp-endpoint", endpoint)
	var got []otlpFigures
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		got = readOTLP(t, out, s.pid)
		if n := len(got); n >= 2 && got[n-1].values["inuse_space"] >= holdBytes {
			break
		}
	}
	logs := s.stop()
	stopCollector()               // its file exporter flushes what it still buffers
	got = readOTLP(t, out, s.pid) // what came before udstrace stopped
	if len(got) < 2 {
		t.Fatalf("%d OTLP requests about udshold reached the collector:\n%s", len(got), logs)
	}
	raw, err := os.ReadFile(s.report)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Processes []struct {
			PID              int    `json:"pid"`
			Allocations      int64  `json:"allocations"`
			AllocatedBytes   int64  `json:"allocated_bytes"`
			OutstandingBytes int64  `json:"outstanding_bytes"`
			OutstandingCount int64  `json:"outstanding_count"`
			Exe              string `json:"exe"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	for _, p := range rep.Processes {
		if p.PID != s.pid {
			continue
		}
		last := got[len(got)-1]
		if last.values["inuse_space"] != p.OutstandingBytes || last.values["inuse_objects"] != p.OutstandingCount {
			t.Errorf("last OTLP request: inuse %d bytes in %d objects; JSON report outstanding %d bytes in %d", last.values["inuse_space"], last.values["inuse_objects"], p.OutstandingBytes, p.OutstandingCount)
		}
		var objs, bytes int64
		for _, g := range got {
			objs += g.values["alloc_objects"]
			bytes += g.values["alloc_space"]
		}
		if objs != p.Allocations || bytes != p.AllocatedBytes {
			t.Errorf("OTLP intervals add up to %d allocations, %d bytes; JSON report %d, %d", objs, bytes, p.Allocations, p.AllocatedBytes)
		}
		if last.attrs["process.executable.name"] != "udshold" || last.attrs["host.name"] != host || last.attrs["process.executable.path"] != p.Exe {
			t.Errorf("resource attributes %v", last.attrs)
		}
		t.Logf("%d OTLP requests; last: %v; intervals' allocations %d, %d bytes", len(got), last.values, objs, bytes)
		return
	}
	t.Fatalf("JSON report has no udshold pid %d", s.pid)
}
