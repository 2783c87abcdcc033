package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/session"
	"github.com/udstrace/udstrace/pkg/symbolize"
)

// options is the flat set of command-line options.
type options struct {
	workload   string
	messages   int
	size       int
	user       string
	echoLibc   string
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
	weight     string
	foldedRoot string
	sort       string
	fileMaps   bool
	kernel     bool
	kernelSet  bool // --kernel was given (else: on for the echo workload only)

	allocator, allocatorPrefix string // --allocator, --allocator-prefix
	serve                      string
	otlp                       string
}

var formats = []string{"text", "json", "ndjson", "pprof", "folded", "html"}

// addFlags defines every option on fs, GNU-style (--name, and -x where the field has one: -o as
// strace, -p and -f as bpftrace). Every subcommand parses all of them, so that one given where it
// means nothing is refused by name (inapplicable) rather than as unknown; help shows each
// subcommand only its own (hideInapplicable).
func addFlags(fs *pflag.FlagSet, o *options) {
	fs.StringVar(&o.workload, "workload", "", "run: built-in workload to run and trace: echo")
	fs.IntVar(&o.messages, "messages", 3, "echo: messages each client sends")
	fs.IntVar(&o.size, "size", 0, "echo: bytes per message (0: the classic three strings)")
	fs.StringVar(&o.echoLibc, "echo-libc", "glibc", "echo: the C library the workload's programs are built against: glibc or musl (built when musl-tools' musl-gcc was there)")
	fs.StringVar(&o.user, "user", "nobody", "echo: run the workload as this unprivileged `USER`")
	fs.BoolVar(&o.kernel, "kernel", false, "also trace the kernel's own allocations (slab, pages) in the traced tasks, with kernel stacks and frees paired across processes; on by default for the echo workload (--kernel=false turns it off); costs a tracepoint hit on every kernel allocation of the machine")
	fs.StringVarP(&o.format, "format", "f", "text", "report format: "+strings.Join(formats, ", "))
	fs.StringVarP(&o.output, "output", "o", "", "write the report to `FILE` instead of stdout (- : stdout)")
	fs.StringVar(&o.mode, "mode", "full", "full (every call paired with its free, stacks, outstanding) or count (calls and bytes per stack, aggregated in the kernel, frees not traced; cheapest)")
	fs.StringVar(&o.stack, "stack", "auto", "user stacks: auto or table (unwound in the kernel with the binaries' .eh_frame), cfi (each event copies the stack, unwound here) or fp (the kernel's frame-pointer walk: wrong in code without frame pointers)")
	fs.UintVar(&o.stackBytes, "stack-bytes", 8192, "bytes of user stack copied per event with --stack cfi, and while a module's unwind table loads (power of two, 512..16384)")
	fs.StringVar(&o.cacheDir, "cache", defaultCacheDir(), "keep the unwind tables compiled for each binary (by build-id) in `DIR`, so a binary traced before starts with complete stacks at once")
	fs.BoolVar(&o.noCache, "no-cache", false, "neither read nor write the unwind cache")
	fs.UintVar(&o.unwindRows, "unwind-rows", 1<<20, "rows of the kernel's unwind table, shared by every module (8 bytes each; gcc's cc1 needs 480,000, libc 28,000)")
	fs.UintVar(&o.ringBytes, "ring-size", 16<<20, "ring buffer bytes (power of two, 4096 to 1073741824)")
	fs.UintVar(&o.tableSize, "table-size", 65536, "entries of the kernel's per-thread, per-process and per-site tables (picked blocks: 4×); a full table is counted as lost")
	fs.BoolVar(&o.follow, "follow", true, "trace children of traced processes")
	fs.BoolVar(&o.debug, "debug", false, "verbose logs, the workload's output, and the BPF verifier log on load errors")
	fs.StringVar(&o.allocator, "allocator", "", "also probe the malloc family in this `FILE`: an allocator udstrace does not recognise, or one without exported symbols (looked up in its symbol table: a static binary that is not stripped)")
	fs.StringVar(&o.allocatorPrefix, "allocator-prefix", "", "with --allocator: its functions are `PREFIX`malloc, PREFIXfree... (je_ for a jemalloc built with a prefix)")
	fs.BoolVar(&o.verify, "verify", false, "run: also run the command under udstrace's LD_PRELOAD counter and compare counts per process")
	fs.IntVar(&o.topSites, "top", 20, "text: call sites to print (1 to 100000)")
	fs.Uint64Var(&o.sample, "sample-bytes", 0, "take stacks (and in full mode track blocks) only for calls picked about once every `N` bytes allocated (Poisson, unbiased weights; per-process totals stay exact); 0: every call")
	fs.IntVar(&o.maxSites, "max-sites", 4096, "call sites reported one by one (the hottest); the colder ones of each process are folded by kind and calling module, totals exact, which bounds the report and its memory (0: no bound)")
	fs.IntVar(&o.maxProcs, "max-procs", 100, "processes reported one by one (the first seen); later ones are folded by command and executable once they exit, which bounds memory (0: no bound)")
	fs.StringVarP(&o.pids, "pid", "p", "", "`PID[,PID...]` of running processes to trace (attach also takes them as arguments)")
	fs.DurationVar(&o.duration, "duration", 0, "attach, trace, top: stop after this long (e.g. 30s; 0: until Ctrl-C)")
	fs.DurationVar(&o.interval, "interval", 0, "ndjson, top: emit a snapshot this often (at least 100ms, e.g. 1s)")
	fs.DurationVar(&o.minAge, "min-age", 0, "report outstanding blocks older than this as long-lived (e.g. 10s)")
	fs.Uint64Var(&o.minSize, "min-size", 0, "leave out allocations smaller than this many bytes")
	fs.StringVar(&o.comm, "comm", "", "trace only processes with this name")
	fs.StringVar(&o.cgroup, "cgroup", "", "trace only processes in this cgroup v2 `PATH` (absolute or under /sys/fs/cgroup)")
	fs.DurationVar(&o.killAfter, "kill-after", session.DefaultKillAfter, "run: on Ctrl-C or SIGTERM the command's process group gets SIGTERM, then SIGKILL after this long (0: at once; a second Ctrl-C: at once)")
	fs.StringVar(&o.weight, "weight", "bytes", "folded: what each stack's value counts: "+strings.Join(weightNames(), ", ")+" (outstanding-*: full mode)")
	fs.BoolVar(&o.fileMaps, "include-file-maps", false, "show the call sites of file mappings (mmap of a file: libraries, data files) among the allocations in text, pprof, folded, ndjson and top; JSON always has them, marked file_backed, and every report lists the files mapped apart")
	fs.StringVar(&o.sort, "sort", "bytes", "top: rank sites by bytes (allocated per second), count (calls per second), outstanding (bytes not freed) or growth (outstanding bytes gained per second)")
	fs.StringVar(&o.serve, "serve", "", "attach, trace: serve Prometheus metrics (/metrics) and pprof heap profiles (/debug/pprof/heap, /debug/pprof/heap/interval) on `HOST:PORT`, cut every --interval (default 10s), until stopped")
	fs.StringVar(&o.otlp, "otlp-endpoint", "", "attach, trace: post each --interval's heap profile as OTLP profiles over HTTP to `URL` (http://HOST:4318: its /v1development/profiles)")
	fs.StringVar(&o.foldedRoot, "folded-root", "", "folded: process roots each stack at a frame naming its process (comm-PID), to keep processes apart in one flame graph")
}

func weightNames() []string {
	var out []string
	for _, w := range report.Weights {
		out = append(out, string(w))
	}
	return out
}

// cache is the unwind cache directory to use, "" for none.
func (o *options) cache() string {
	if o.noCache {
		return ""
	}
	return o.cacheDir
}

// debuginfod is the debuginfod client's configuration from the environment (DEBUGINFOD_URLS and
// the like, as elfutils reads them); its files are cached under the cache directory.
func (o *options) debuginfod() (symbolize.DebuginfodConfig, error) {
	dir := o.cache()
	if dir != "" {
		dir = filepath.Join(dir, "debuginfod")
	}
	return symbolize.DebuginfodEnv(os.Getenv, dir)
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
		if err != nil || n <= 0 || n > maxPID {
			return nil, fmt.Errorf("--pid %q: use %s", f, flagRanges["pid"])
		}
		out = append(out, n)
	}
	return out, nil
}
