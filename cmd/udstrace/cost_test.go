package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestPeakRSSIsUdstracesOwn: the report's tracer.peak_rss_bytes is udstrace's own memory, not
// that of whoever started it. The test process holds 256 MiB of touched memory when it starts
// udstrace (getrusage's ru_maxrss would carry it across the exec); a run of `true` needs far
// less, and more than nothing.
func TestPeakRSSIsUdstracesOwn(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	ballast := make([]byte, 256<<20)
	for i := range ballast {
		if i%4096 == 0 {
			ballast[i] = 1
		}
	}
	out := filepath.Join(t.TempDir(), "r.json")
	_, stderr, code := runCLI(t, bin, "run", "--format", "json", "-o", out, "--", "true")
	runtime.KeepAlive(ballast)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Tracer struct {
			PeakRSS uint64 `json:"peak_rss_bytes"`
		} `json:"tracer"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Tracer.PeakRSS == 0 || r.Tracer.PeakRSS >= 200<<20 {
		t.Errorf("peak_rss_bytes %d (%d MiB): want udstrace's own, above 0 and well below the parent's 256 MiB", r.Tracer.PeakRSS, r.Tracer.PeakRSS>>20)
	}
}
