package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/udstrace/udstrace/workload"
)

// ---- the report ----

// heapCount is one allocator function's calls and bytes.
type heapCount struct {
	Calls  uint64 `json:"calls"`
	Bytes  uint64 `json:"bytes"`
	Failed uint64 `json:"failed"`
}

// proc is the part of a report's process the checks read.
type proc struct {
	PID      uint32               `json:"pid"`
	PPID     uint32               `json:"ppid"`
	Comm     string               `json:"comm"`
	Exe      string               `json:"exe"`
	Role     string               `json:"role"`
	Exited   bool                 `json:"exited"`
	ExitCode *int                 `json:"exit_code"`
	Heap     map[string]heapCount `json:"heap_calls_by_kind"`
	Frees    uint64               `json:"frees"`
	Unmatch  uint64               `json:"unmatched_frees"`
	Mmap     uint64               `json:"mmap_calls"`
	Munmap   uint64               `json:"munmap_calls"`
	Brk      uint64               `json:"brk_calls"`
}

// report is the part of udstrace's JSON report the checks read.
type report struct {
	LostEvents uint64 `json:"lost_events"`
	LostDetail struct {
		RingBuffer     uint64 `json:"ring_buffer"`
		StackTruncated uint64 `json:"stack_truncated"`
		Other          uint64 `json:"other"`
		// Processes the kernel's table had no room for, and their allocator calls (part of other).
		UntracedProcesses uint64 `json:"untraced_processes"`
		UntracedCalls     uint64 `json:"untraced_process_calls"`
	} `json:"lost_detail"`
	Warnings  []string `json:"warnings"`
	Processes []proc   `json:"processes"`
	Sites     []struct {
		PID   uint32 `json:"pid"`
		Stack []struct {
			Module string `json:"module"`
			Symbol string `json:"symbol"`
		} `json:"stack"`
	} `json:"sites"`
	UnmatchedFreeSites []struct {
		PID    uint32 `json:"pid"`
		Count  uint64 `json:"count"`
		Caller []struct {
			Module string `json:"module"`
			Symbol string `json:"symbol"`
		} `json:"caller"`
	} `json:"unmatched_free_sites"`
}

// libcFrees counts pid's unmatched frees made from inside libc itself: calls to its own free that
// bypass the interposable symbol (a dying thread's tcache), so no LD_PRELOAD counter sees them.
func (r *report) libcFrees(pid uint32) (n uint64, where []string) {
	for _, f := range r.UnmatchedFreeSites {
		if f.PID != pid || len(f.Caller) == 0 || !strings.HasPrefix(filepath.Base(f.Caller[0].Module), "libc.so") {
			continue
		}
		n += f.Count
		where = append(where, fmt.Sprintf("%d× %s", f.Count, f.Caller[0].Symbol))
	}
	return n, where
}

func readReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return &r, nil
}

func (r *report) byPID(pid uint32) *proc {
	for i := range r.Processes {
		if r.Processes[i].PID == pid {
			return &r.Processes[i]
		}
	}
	return nil
}

// heapKinds are the allocator functions; the other kinds in heap_calls_by_kind are memory syscalls.
var heapKinds = map[string]bool{"malloc": true, "calloc": true, "realloc": true, "reallocarray": true, "free": true,
	"posix_memalign": true, "memalign": true, "aligned_alloc": true, "valloc": true, "pvalloc": true}

// counts is calls and bytes per allocator function.
type counts map[string][2]uint64

// reported returns a process's allocator calls and bytes per function (free: calls only).
func (p *proc) reported() counts {
	out := counts{}
	for k, c := range p.Heap {
		if !heapKinds[k] || c.Calls == 0 {
			continue
		}
		b := c.Bytes
		if k == "free" {
			b = 0
		}
		out[k] = [2]uint64{c.Calls, b}
	}
	return out
}

// ---- ground truth: the LD_PRELOAD counting interposer ----

// truth is allocount's count for one process, by function.
type truth map[string]workload.Count

// expected is what udstrace should report for this process (workload.Traced).
func (t truth) expected() counts { return counts(workload.Traced(t)) }

// interpose runs argv under allocount.so and returns the counts per PID and the program's stdout.
func (e *env) interpose(argv []string, extraEnv ...string) (map[int]truth, string, error) {
	dir, err := os.MkdirTemp(e.work, "truth-")
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "LD_PRELOAD="+e.allocount, "ALLOCOUNT_DIR="+dir), extraEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, "", fmt.Errorf("running %v under allocount.so: %v: %s", argv, err, stderr.String())
	}
	all, err := workload.ReadCounts(dir)
	if err != nil {
		return nil, "", err
	}
	res := map[int]truth{}
	for _, c := range all {
		res[c.PID] = c.Funcs
	}
	return res, string(out), nil
}

// diffCounts describes every difference between what udstrace reported and the truth; empty: equal.
func diffCounts(got, want counts) []string {
	var out []string
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		if got[k] != want[k] {
			out = append(out, fmt.Sprintf("%s: udstrace %d calls/%d B, allocount %d/%d", k, got[k][0], got[k][1], want[k][0], want[k][1]))
		}
	}
	return out
}

func formatCounts(c counts) string {
	var parts []string
	for k, v := range c {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v[0]))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}
