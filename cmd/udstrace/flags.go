package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/udstrace/udstrace/pkg/session"
)

// options is the flat set of command-line options.
type options struct {
	workload   string
	messages   int
	size       int
	user       string
	format     string
	output     string
	mode       string
	stack      string
	stackBytes uint
	ringBytes  uint
	tableSize  uint
	unwindRows uint
	cacheDir   string
	noCache    bool
	follow     bool
	debug      bool
	verify     bool
	topSites   int
	maxProcs   int
	maxSites   int
	sample     uint64
	pids       string
	duration   time.Duration
	interval   time.Duration
	minAge     time.Duration
	minSize    uint64
	comm       string
	cgroup     string
	killAfter  time.Duration
}

var formats = []string{"text", "json", "ndjson", "pprof", "folded"}

func newFlags(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("udstrace", flag.ContinueOnError)
	fs.StringVar(&o.workload, "workload", "", "run: built-in workload to run and trace: echo")
	fs.IntVar(&o.messages, "messages", 3, "echo: messages each client sends")
	fs.IntVar(&o.size, "size", 0, "echo: bytes per message (0: the classic three strings)")
	fs.StringVar(&o.user, "user", "nobody", "echo: run the workload as this unprivileged `USER`")
	fs.StringVar(&o.format, "format", "text", "report format: "+strings.Join(formats, ", "))
	fs.StringVar(&o.output, "o", "", "write the report to `FILE` instead of stdout")
	fs.StringVar(&o.mode, "mode", "full", "full (every call paired with its free, stacks, outstanding) or count (calls and bytes per stack, aggregated in the kernel, frees not traced; cheapest)")
	fs.StringVar(&o.stack, "stack", "auto", "user stacks: auto or table (unwound in the kernel with the binaries' .eh_frame), cfi (each event copies the stack, unwound here) or fp (the kernel's frame-pointer walk: wrong in code without frame pointers)")
	fs.UintVar(&o.stackBytes, "stack-bytes", 8192, "bytes of user stack copied per event with --stack cfi, and while a module's unwind table loads (power of two, 512..16384)")
	fs.StringVar(&o.cacheDir, "cache", defaultCacheDir(), "keep the unwind tables compiled for each binary (by build-id) in `DIR`, so a binary traced before starts with complete stacks at once")
	fs.BoolVar(&o.noCache, "no-cache", false, "neither read nor write the unwind cache")
	fs.UintVar(&o.unwindRows, "unwind-rows", 1<<20, "rows of the kernel's unwind table, shared by every module (8 bytes each; gcc's cc1 needs 480,000, libc 28,000)")
	fs.UintVar(&o.ringBytes, "ring-size", 16<<20, "ring buffer bytes (power of two, ≥ 4096)")
	fs.UintVar(&o.tableSize, "table-size", 65536, "entries of the kernel's per-thread, per-process and per-site tables (picked blocks: 4×); a full table is counted as lost")
	fs.BoolVar(&o.follow, "follow", true, "trace children of traced processes")
	fs.BoolVar(&o.debug, "debug", false, "verbose logs, the workload's output, and the BPF verifier log on load errors")
	fs.BoolVar(&o.verify, "verify", false, "run: also run the command under udstrace's LD_PRELOAD counter and compare counts per process")
	fs.IntVar(&o.topSites, "top", 20, "text: call sites to print")
	fs.Uint64Var(&o.sample, "sample-bytes", 0, "take stacks (and in full mode track blocks) only for calls picked about once every `N` bytes allocated (Poisson, unbiased weights; per-process totals stay exact); 0: every call")
	fs.IntVar(&o.maxSites, "max-sites", 4096, "call sites reported one by one (the hottest); the colder ones of each process are folded by kind and calling module, totals exact, which bounds the report and its memory (0: no bound)")
	fs.IntVar(&o.maxProcs, "max-procs", 100, "processes reported one by one (the first seen); later ones are folded by command and executable once they exit, which bounds memory (0: no bound)")
	fs.StringVar(&o.pids, "pid", "", "attach, trace: `PID[,PID...]` of running processes to trace")
	fs.DurationVar(&o.duration, "duration", 0, "attach, trace, top: stop after this long (e.g. 30s; 0: until Ctrl-C)")
	fs.DurationVar(&o.interval, "interval", 0, "ndjson, top: emit a snapshot this often (e.g. 1s)")
	fs.DurationVar(&o.minAge, "min-age", 0, "report outstanding blocks older than this as long-lived (e.g. 10s)")
	fs.Uint64Var(&o.minSize, "min-size", 0, "leave out allocations smaller than this many bytes")
	fs.StringVar(&o.comm, "comm", "", "trace only processes with this name")
	fs.StringVar(&o.cgroup, "cgroup", "", "trace only processes in this cgroup v2 `PATH` (absolute or under /sys/fs/cgroup)")
	fs.DurationVar(&o.killAfter, "kill-after", session.DefaultKillAfter, "run: on Ctrl-C or SIGTERM the command's process group gets SIGTERM, then SIGKILL after this long (0: at once; a second Ctrl-C: at once)")
	return fs
}

func (o *options) validate(sub string, rest []string) string {
	if sub == "attach" {
		if _, err := parsePIDs(o.pids); err != nil {
			return err.Error()
		}
	}
	if sub == "trace" && o.pids != "" {
		if _, err := parsePIDs(o.pids); err != nil {
			return err.Error()
		}
	}
	if sub != "run" && (o.workload != "" || len(rest) > 0) {
		return sub + " takes no command or workload: use udstrace run for that"
	}
	ok := false
	for _, f := range formats {
		ok = ok || f == o.format
	}
	switch {
	case !ok:
		return fmt.Sprintf("unknown format %q: use --format %s", o.format, strings.Join(formats, ", "))
	case sub == "run" && o.workload == "" && len(rest) == 0:
		return "nothing to trace: give --workload echo or -- COMMAND [ARG...]"
	case o.workload != "" && len(rest) > 0:
		return "give either --workload or a command, not both"
	case o.stack != "fp" && o.stack != "cfi" && o.stack != "auto" && o.stack != "table":
		return fmt.Sprintf("unknown stack mode %q: use --stack auto, table, cfi or fp", o.stack)
	case o.mode == "count" && o.stack == "cfi":
		return "--mode count aggregates stacks in the kernel, which copied stacks cannot be: use --stack auto or fp"
	case o.unwindRows < 1<<16 || o.unwindRows > 1<<27:
		return fmt.Sprintf("--unwind-rows %d: use 65536 to 134217728 rows", o.unwindRows)
	case o.mode != "full" && o.mode != "count":
		return fmt.Sprintf("unknown mode %q: use --mode full or --mode count", o.mode)
	case o.tableSize < 1024 || o.tableSize > 1<<24:
		return fmt.Sprintf("--table-size %d: use 1024 to 16777216 entries", o.tableSize)
	case o.maxProcs < 0:
		return "--max-procs must be 0 (no bound) or more"
	case o.maxSites < 0:
		return "--max-sites must be 0 (no bound) or more"
	case o.messages < 1:
		return "--messages must be at least 1"
	case o.killAfter < 0:
		return fmt.Sprintf("--kill-after %s: use a duration of 0 or more (e.g. --kill-after 5s)", o.killAfter)
	case o.format == "ndjson" && o.interval <= 0:
		return "--format ndjson needs --interval (e.g. --interval 1s)"
	case o.verify && o.sample > 0:
		return "--verify compares exact counts per call site: drop --sample-bytes"
	case o.verify && (sub != "run" || o.mode != "full"):
		return "--verify works with udstrace run in full mode"
	case o.ringBytes < 4096 || o.ringBytes&(o.ringBytes-1) != 0:
		return fmt.Sprintf("--ring-size %d: use a power of two of at least 4096", o.ringBytes)
	case o.stack != "fp" && o.ringBytes < 16*o.stackBytes:
		// Stacks are copied while unwind tables load (and always with cfi); copies may fill only
		// half the ring.
		return fmt.Sprintf("--ring-size %d holds too few %d-byte stack copies: use at least %d, or a smaller --stack-bytes", o.ringBytes, o.stackBytes, 16*o.stackBytes)
	}
	return ""
}

// cache is the unwind cache directory to use, "" for none.
func (o *options) cache() string {
	if o.noCache {
		return ""
	}
	return o.cacheDir
}

// defaultCacheDir is /var/cache/udstrace for root, else under the user's cache directory.
func defaultCacheDir() string {
	if os.Geteuid() == 0 {
		return "/var/cache/udstrace"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "udstrace")
	}
	return ""
}

// parsePIDs reads --pid's comma-separated list.
func parsePIDs(s string) ([]int, error) {
	if s == "" {
		return nil, errors.New("attach needs --pid PID[,PID...]")
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--pid: %q is not a process ID", f)
		}
		out = append(out, n)
	}
	return out, nil
}
