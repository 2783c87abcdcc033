package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestServeKernelMetrics: with --kernel, /metrics exposes the kernel allocations made in a traced
// process's context (here its page faults while it fills its blocks), and once the program holds
// still, the scraped total equals the final JSON report's kernel_sites for that process.
func TestServeKernelMetrics(t *testing.T) {
	testenv.NeedRoot(t)
	s := startServed(t, nil, "--kernel")
	pid := strconv.Itoa(s.pid)
	line := regexp.MustCompile(`(?m)^udstrace_kernel_allocations_total\{[^}]*pid="` + pid + `"[^}]*\} (\S+)$`)
	scrape := func() float64 {
		resp, err := http.Get("http://" + s.addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var sum float64
		for _, m := range line.FindAllStringSubmatch(string(b), -1) {
			v, _ := strconv.ParseFloat(m[1], 64)
			sum += v
		}
		return sum
	}
	var last, now float64
	deadline := time.Now().Add(90 * time.Second)
	for now = scrape(); now == 0 || now != last; now = scrape() { // steady over one interval
		if time.Now().After(deadline) {
			t.Fatalf("kernel allocations of pid %s never steady in /metrics (last %v)", pid, now)
		}
		last = now
		time.Sleep(1500 * time.Millisecond)
	}
	s.stop()
	b, err := os.ReadFile(s.report)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		KernelSites []struct {
			PID   int    `json:"pid"`
			Count uint64 `json:"count"`
		} `json:"kernel_sites"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, k := range r.KernelSites {
		if k.PID == s.pid {
			want += k.Count
		}
	}
	if uint64(now) != want || want == 0 {
		t.Errorf("scraped %v kernel allocations for pid %s, the final report %d", now, pid, want)
	}
}
