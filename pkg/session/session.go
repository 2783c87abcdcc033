// Package session runs one trace from start to report: the loader, the launched targets, stacks and the report builder.
package session

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/pkg/cgroupinfo"
	"github.com/udstrace/udstrace/pkg/kstack"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/symbolize"
)

// Options is everything a trace needs, flat, as the CLI fills it.
type Options struct {
	Command     []string // run: the command to trace
	Workload    string   // run: a built-in workload instead ("echo")
	Messages    int      // echo: messages per client
	Kernel      string   // KernelOn, KernelOff, or KernelDefault (on for the echo workload)
	Size        int      // echo: bytes per message (0: the classic three strings)
	User        string   // echo: run the workload as this user (default "nobody"; "root" to keep root)
	EchoLibc    string   // echo: the C library its programs are built against: "glibc" (default) or "musl"
	Stack       string   // "auto" or "table" (in-kernel CFI), "cfi" (copied, unwound here) or "fp"
	StackBytes  uint32   // bytes of user stack copied per event (cfi, and the fallback)
	RingBytes   uint32
	TableSize   uint32 // kernel tables' entries (0: 65536)
	UnwindRows  uint32 // rows of the kernel's unwind table (0: 1<<22)
	CacheDir    string // where compiled unwind pages are kept across traces ("": nowhere)
	Follow      bool
	Debug       bool
	Mode        string               // "full" (default) or "count"
	SampleBytes uint64               // stacks (and, in full mode, tracking) only for calls sampled every this many bytes on average (0: all)
	MinAge      time.Duration        // outstanding blocks older than this are reported as long-lived
	MinSize     uint64               // allocations smaller than this are left out
	Comm        string               // trace: only processes with this name
	Cgroup      string               // trace: only processes in this cgroup (v2 directory)
	PIDs        []int                // trace: only these processes (and their children)
	TopSites    int                  // text: call sites printed
	MaxProcs    int                  // exited processes reported one by one before folding (0: no bound)
	MaxSites    int                  // call sites reported one by one; colder ones folded (0: no bound)
	Interval    time.Duration        // with OnInterval: how often a snapshot is taken
	OnInterval  func(*report.Report) // called with a snapshot every Interval while tracing
	OnTracing   func()               // attach, trace: called once the probes are in place
	// DetachLater returns the report before the probes are detached (which takes RCU grace
	// periods); the caller must call Wait before exiting, or before another tool probes libc.
	DetachLater bool
	Env         []string  // run: variables added to the command's environment
	NoASLR      bool      // run: the command runs with address space randomization off (--verify)
	Stdout      io.Writer // where the traced commands' output goes
	Stderr      io.Writer
	Log         *slog.Logger

	// Allocator names an object whose malloc family to probe besides those found (--allocator):
	// an allocator udstrace does not recognise, or one without exported symbols (a static
	// binary's, from its symbol table); AllocatorPrefix is its functions' prefix (je_ for je_malloc).
	Allocator       string
	AllocatorPrefix string

	// KillAfter is how long an interrupted command's process group has between SIGTERM and SIGKILL
	// (0: DefaultKillAfter; negative: none, SIGKILL right after SIGTERM).
	KillAfter time.Duration
	KillNow   <-chan struct{} // closed: an interrupted command's group gets SIGKILL at once (a second Ctrl-C)

	// Debuginfod says which debuginfod servers to ask for the debug files of stripped binaries
	// (no URLs: none), as the CLI read it from DEBUGINFOD_URLS and the like.
	Debuginfod symbolize.DebuginfodConfig
}

// ErrCountCopy: count mode aggregates stacks in the kernel, which a copied stack cannot be.
var ErrCountCopy = errors.New("count mode aggregates stacks in the kernel: use --stack auto or fp, not cfi")

// tableWait bounds how long a trace waits for unwind tables it loads before the traced code runs.
const tableWait = 10 * time.Second

// ErrUnknownWorkload names a workload that does not exist.
var ErrUnknownWorkload = errors.New("unknown workload")

// Session is one trace in progress.
type Session struct {
	opts    Options
	tracer  *loader.Tracer
	maps    *procmaps.Table
	stacks  *stackStore
	tables  *tableLoader
	builder *report.Builder
	meta    report.Meta
	mu      sync.Mutex // guards roles and warnings, written from the launcher while events flow
	bmu     sync.Mutex // guards the builder and samples: events and interval snapshots
	samples map[sampleKey]*sampleSum
	cgroups *cgroupinfo.Cache // processes' cgroups, read at exec or first sight (containers.go)
	unwinds chan unwindJob    // copied stacks for the unwinder goroutine
	done    chan error
	cancel  context.CancelFunc
	kstacks kernelStacks // handler goroutine: kernel stacks named (kernel.go)

	namedKey string // the file key of Options.Allocator, once opened
}

func stackMode(s string) (loader.StackMode, error) {
	switch s {
	case "", "auto", "table":
		return loader.StackTable, nil
	case "cfi":
		return loader.StackCopy, nil
	case "fp":
		return loader.StackFP, nil
	}
	return 0, fmt.Errorf("choosing stack mode: %q is not auto, table, cfi or fp", s)
}

// start loads the tracer and begins reading events.
func start(opts Options, filter bool) (*Session, error) {
	mode, err := stackMode(opts.Stack)
	if err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Mode != "" && opts.Mode != "full" && opts.Mode != "count" {
		return nil, fmt.Errorf("choosing mode: %q is not full or count", opts.Mode)
	}
	if opts.Mode == "count" && mode == loader.StackCopy {
		return nil, fmt.Errorf("choosing stack mode: %w", ErrCountCopy)
	}
	cgroup, err := cgroupID(opts.Cgroup)
	if err != nil {
		return nil, err
	}
	began := time.Now()
	if kernelWanted(opts) {
		go symbolize.KernelSymbols().Warm() // read while the BPF programs load
	}
	tr, err := loader.Load(loader.Config{
		Filter: filter, Follow: opts.Follow, StackMode: mode, StackBytes: opts.StackBytes,
		RingBytes: opts.RingBytes, TableSize: opts.TableSize, UnwindRows: opts.UnwindRows, Debug: opts.Debug, Count: opts.Mode == "count",
		Comm: opts.Comm, CgroupID: cgroup, SampleBytes: opts.SampleBytes, Kernel: kernelWanted(opts),
	})
	if err != nil {
		return nil, err
	}
	opts.Log.Debug("BPF loaded", "took", time.Since(began))
	s := &Session{
		opts: opts, tracer: tr, maps: newTable(opts.Mode == "count"),
		done: make(chan error, 1), cgroups: cgroupinfo.NewCache(),
	}
	s.stacks = newStackStore(s.maps)
	s.tables = newTableLoader(s)
	s.maps.Register = func(m *procmaps.Module) uint32 {
		id := s.tables.register(m)
		s.tables.want(m)
		return id
	}
	s.maps.PageUsed = s.tables.pageUsed
	s.maps.Adopted = func(m *procmaps.Module) { s.tables.wantWhole(m, false) }
	s.unwinds = make(chan unwindJob, 4096)
	go s.unwindCopies()
	s.builder = report.NewBuilder(report.Options{TopSites: opts.TopSites, MinAge: opts.MinAge, MaxProcs: opts.MaxProcs, MaxSites: opts.MaxSites,
		FoldAtEnd: opts.Mode == "count", Stacks: s.stacks.resolve, CallerStack: s.callerStack, LiveSockets: true})
	s.meta = report.Meta{Mode: modeName(opts.Mode), SampleBytes: opts.SampleBytes, StackMode: stackName(opts.Stack), Start: time.Now(), Roles: map[uint32]report.Role{}, Allocators: map[uint32]report.Allocator{},
		RingBytes: cmp.Or(opts.RingBytes, 16<<20), TableSize: cmp.Or(opts.TableSize, 65536)}
	if d, err := symbolize.NewDebuginfod(opts.Debuginfod); err != nil {
		s.meta.Warnings = append(s.meta.Warnings, fmt.Sprintf("not asking debuginfod servers for debug files: %v", err))
	} else {
		s.maps.Debuginfod = d
	}
	if !tr.UsesUprobeMulti() {
		s.meta.Warnings = append(s.meta.Warnings, "kernel lacks uprobe_multi (needs ≥ 6.6): using one uprobe link per function")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- tr.Read(ctx, newHandler(s)) }()
	if opts.OnInterval != nil && opts.Interval > 0 {
		go s.snapshots(ctx)
	}
	return s, nil
}

func modeName(m string) string {
	if m == "" {
		return "full"
	}
	return m
}

func stackName(s string) string {
	if s == "" {
		return "auto"
	}
	return s
}

// callerStack names the caller of an unmatched free as a one-frame stack; the builder calls it
// with bmu held.
func (s *Session) callerStack(pid uint32, ret uint64) uint64 {
	return s.stacks.intern([]kstack.Frame{s.maps.Caller(pid, ret)}, true)
}

// attachAllocator probes an object that exports malloc, found by path (run resolves them as the loader will).
func (s *Session) attachAllocator(path string) error {
	m, err := s.maps.OpenFile(path)
	if err != nil {
		return fmt.Errorf("opening allocator %s: %w", path, err)
	}
	return s.attachModule(m)
}

// attachModule probes an allocator object (a libc, jemalloc, ...) the session holds open. Its table loads first (every heap stack
// starts in it); the probes go into the held file itself, not whatever its path names by now.
func (s *Session) attachModule(m *procmaps.Module) error {
	began := time.Now()
	wait([]chan struct{}{s.tables.wantWhole(m, true)}, tableWait)
	loaded := time.Since(began)
	probes, err := s.tracer.AttachLibc(m.FdPath(), m.Path)
	if err != nil {
		return err
	}
	s.opts.Log.Debug("attached", "libc", m.Path, "functions", len(probes), "table took", loaded, "took", time.Since(began))
	return nil
}

func (s *Session) warn(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meta.Warnings = append(s.meta.Warnings, fmt.Sprintf(format, args...))
}

func (s *Session) setRole(pid int, role report.Role) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meta.Roles[uint32(pid)] = role
}

// finish stops reading, drains the ring buffer, detaches everything and builds the report.
func (s *Session) finish() (*report.Report, error) {
	began := time.Now()
	s.cancel()
	readErr := <-s.done
	s.opts.Log.Debug("events drained", "took", time.Since(began))
	close(s.unwinds)
	warmed := s.stacks.stopWarming()
	s.tables.stop()
	if n, err := s.tracer.DeadThreadStates(); err == nil && n > 0 {
		s.warn("%d entries of exited threads or processes were left in the kernel's tables (stale state)", n)
	}
	counts, kerr := s.countsIfAny()
	totals, samples, terr := s.sampledIfAny()
	kerr = errors.Join(kerr, terr)
	lost, lerr := s.tracer.Lost()
	stk, sterr := s.tracer.StackStats()
	lerr = errors.Join(lerr, sterr)
	socks, serr := s.tracer.SocketStats()
	s.meta.Lost, s.meta.Stacks = s.lostMeta(lost, stk)
	s.meta.Kernel = s.kernelMeta()
	s.detach(s.tracer, s.tables.saveCache)
	defer func() {
		warmed()
		s.maps.Close()
		s.maps.Debuginfod.Close()
	}()
	if err := errors.Join(readErr, kerr, lerr, serr); err != nil {
		return nil, err
	}
	s.bmu.Lock()
	defer s.bmu.Unlock()
	for _, c := range counts {
		if s.builder.Comm(c.PID) == "" { // no exec, fork or exit told its name: it still runs
			s.describe(c.PID)
		}
		s.builder.Counted(c.PID, "", c.Kind, c.StackID, c.Calls, c.Bytes)
	}
	for _, t := range totals {
		s.builder.Totals(t.PID, t.Kind, t.Calls, t.Bytes)
	}
	for _, e := range samples {
		s.builder.Estimated(e.pid, e.comm, e.kind, e.stack, uint64(math.Round(e.calls)), uint64(math.Round(e.bytes)))
	}
	for _, st := range socks {
		s.builder.Sockets(st)
	}
	s.meta.End = time.Now()
	s.meta.Tracer = s.selfCost()
	s.builder.Settle()
	for path, why := range s.maps.Failures() {
		s.warn("no symbols for %s: %s", path, why)
	}
	for path, why := range s.maps.Partial() {
		s.warn("%s: %s: traced from its program headers; its symbols and debug information may be missing", path, why)
	}
	rep := s.builder.Finish(&symbolizer{maps: s.maps, final: true}, s.meta)
	s.labelContainers(rep, false)
	rep.Warnings = append(rep.Warnings, s.maps.Debuginfod.Warnings()...)
	s.opts.Log.Debug("report built", "took", time.Since(began), "sites", len(rep.Sites))
	return rep, nil
}

// closing counts traces still detaching from the kernel.
var closing sync.WaitGroup

// detach saves the unwind cache and detaches the probes: now, or in the background with
// DetachLater (the report need not wait for the grace periods).
func (s *Session) detach(t *loader.Tracer, save func()) {
	closing.Add(1)
	done := func() {
		defer closing.Done()
		save()
		_ = t.Close() // the links and maps go away with their file descriptors in any case
	}
	if s.opts.DetachLater {
		go done()
		return
	}
	done()
}

// Wait blocks until every finished trace has detached from the kernel; call it before exiting.
func Wait() { closing.Wait() }

// abort tears down after a failure before any report.
func (s *Session) abort() {
	s.cancel()
	<-s.done
	close(s.unwinds)
	s.tables.stop()
	s.tracer.Close()
	s.stacks.stopWarming()()
	s.maps.Close()
	s.maps.Debuginfod.Close()
}

func newTable(keepExited bool) *procmaps.Table {
	t := procmaps.New()
	t.KeepExited = keepExited
	return t
}

// countsIfAny reads count mode's in-kernel aggregation (nothing in full mode).
func (s *Session) countsIfAny() ([]loader.Count, error) {
	if s.opts.Mode != "count" {
		return nil, nil
	}
	return s.tracer.Counts()
}

// cgroupID turns a cgroup v2 directory (absolute, or relative to the cgroup2 mount) into the id BPF sees: its inode.
func cgroupID(path string) (uint64, error) {
	if path == "" {
		return 0, nil
	}
	if !filepath.IsAbs(path) {
		root, err := Cgroup2Root()
		if err != nil {
			return 0, err
		}
		path = filepath.Join(root, path)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("finding cgroup %s: %w", path, err)
	}
	if fs.Type != 0x63677270 { // CGROUP2_SUPER_MAGIC
		return 0, fmt.Errorf("finding cgroup %s: not a cgroup v2 directory: --cgroup takes a cgroup2 path", path)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("finding cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// Cgroup2Root returns where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid systems).
func Cgroup2Root() (string, error) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", fmt.Errorf("finding the cgroup2 mount: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("finding the cgroup2 mount: none is mounted; --cgroup needs cgroup v2")
}
