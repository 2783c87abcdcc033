package loader

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// StackMode selects how user stacks are captured.
type StackMode uint32

const (
	StackFP    StackMode = 0 // the kernel's frame-pointer walk: cheap, loses frames in code without frame pointers
	StackCopy  StackMode = 1 // a copy of the stack top, unwound in user space with CFI
	StackTable StackMode = 2 // unwound in the kernel with CFI tables user space loads (the default)
)

// Config is fixed at load time (const volatile in the BPF programs).
type Config struct {
	Filter     bool      // trace only registered targets and their children
	Follow     bool      // take in children of traced processes
	StackMode  StackMode //
	StackBytes uint32    // bytes of stack copied per event (StackCopy); a power of two ≤ 16384
	RingBytes  uint32    // ring buffer size; a power of two, multiple of the page size
	TableSize  uint32    // entries of the per-thread, per-process and per-site tables (0: the object's 65536)
	UnwindRows uint32    // rows of the kernel's unwind table, shared by every module (0: 1<<22)
	Debug      bool      // put the verifier's whole log in errors
	Count      bool      // count mode: entry probes only, calls aggregated in the kernel by stack
	Comm       string    // only processes with this name ("" any)
	CgroupID   uint64    // only processes in this cgroup v2 (0 any)
	// Kernel: the kernel's own allocations in traced tasks, and their frees (bpf/kmem.h; full mode).
	Kernel bool
	// SampleBytes > 0 (count mode): stacks only for calls picked by a Poisson process with this mean
	// interval in bytes; exact totals per process and function.
	SampleBytes uint64
}

// Tracer owns the loaded programs and every link attached to them.
type Tracer struct {
	objs      udstraceObjects
	links     []link.Link
	multi     bool
	count     bool
	attached  map[string][]Probe // libc identity (dev:ino) -> probes placed in it
	libcPaths map[string]string
	named     map[string]string // file key -> symbol prefix of an allocator the user named
	ahead     *Ahead            // probes found while the programs loaded (UseAhead)
	kmem      kmemPrograms
	tables    tables
	// Event ring traffic so far (Read counts it).
	ringRecords, ringBytes atomic.Uint64
}

// ErrVerifier wraps a program the kernel refused; the log is attached only in debug mode.
var ErrVerifier = errors.New("kernel verifier rejected the BPF programs")

// Load checks kernel features, loads the programs and attaches the kernel-side hooks.
func Load(cfg Config) (*Tracer, error) {
	if err := checkFeatures(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("removing memlock limit: %w", err)
	}
	spec, err := loadUdstrace()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	if cfg.Kernel && cfg.Count {
		return nil, ErrKernelCount
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	t := &Tracer{attached: map[string][]Probe{}, libcPaths: map[string]string{}, count: cfg.Count}
	t.multi = features.HaveBPFLinkUprobeMulti() == nil
	if t.multi {
		for _, name := range []string{"alloc_enter", "alloc_return", "free_enter", "alloc_count"} {
			spec.Programs[name].AttachType = ebpf.AttachTraceUprobeMulti
		}
	}
	// The verifier log is left off: a load that fails is retried with it (cilium/ebpf does that
	// when LogLevel is 0), so --debug still shows it, and a successful load does not pay the
	// seconds a full log of udstrace's programs takes.
	opts := &ebpf.CollectionOptions{}
	var kmem func(*ebpf.CollectionOptions) error // the kmem programs load beside the others
	if cfg.Kernel {
		kmem = t.loadKmem(spec)
	}
	if err := loadMode(spec, cfg.Count, opts, &t.objs, kmem); err != nil {
		closeAll(t.kmem.all()...) // loaded beside a program that failed
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			if cfg.Debug {
				return nil, fmt.Errorf("loading BPF programs: %w: %+v", ErrVerifier, ve)
			}
			return nil, fmt.Errorf("loading BPF programs: %w (run with --debug for the verifier log)", ErrVerifier)
		}
		return nil, fmt.Errorf("loading BPF programs: %w", err)
	}
	if err := t.tables.init(&t.objs); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.fillSampleDraws(cfg.SampleBytes); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.attachKernel(); err != nil {
		t.Close()
		return nil, err
	}
	if cfg.Kernel {
		if err := t.attachKmem(); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	if cfg.StackBytes == 0 {
		cfg.StackBytes = 8192
	}
	if cfg.StackBytes > 16384 || cfg.StackBytes&(cfg.StackBytes-1) != 0 || cfg.StackBytes < 512 {
		return fmt.Errorf("configuring stack copy: %d bytes is not a power of two in [512, 16384]", cfg.StackBytes)
	}
	var comm [16]byte
	if len(cfg.Comm) > 15 {
		return fmt.Errorf("configuring comm filter: %q is longer than the kernel's 15-character comm", cfg.Comm)
	}
	copy(comm[:], cfg.Comm)
	vars := map[string]any{
		"cfg_comm":         comm,
		"cfg_cgroup_id":    cfg.CgroupID,
		"cfg_filter":       cfg.Filter,
		"cfg_follow":       cfg.Follow,
		"cfg_self_tgid":    uint32(os.Getpid()),
		"cfg_stack_mode":   uint32(cfg.StackMode),
		"cfg_count_mode":   cfg.Count,
		"cfg_stack_bytes":  cfg.StackBytes,
		"cfg_sample_bytes": cfg.SampleBytes,
		"cfg_kernel":       cfg.Kernel,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	ring := spec.Maps["events"].MaxEntries
	if cfg.RingBytes != 0 {
		ring = cfg.RingBytes
		spec.Maps["events"].MaxEntries = cfg.RingBytes
	}
	// Wake the reader once a quarter of the ring (at most 1 MiB) is queued: each wakeup is an IPI, costly
	// in a VM; Read also drains the ring every DrainEvery, so events never wait long.
	if err := spec.Variables["cfg_wakeup_bytes"].Set(uint64(min(ring/4, 1<<20))); err != nil {
		return fmt.Errorf("setting cfg_wakeup_bytes: %w", err)
	}
	if err := spec.Variables["cfg_ring_bytes"].Set(uint64(ring)); err != nil {
		return fmt.Errorf("setting cfg_ring_bytes: %w", err)
	}
	// An eighth of the ring (at most 256 KiB) stays free for process events when data floods it.
	if err := spec.Variables["cfg_ring_reserve"].Set(uint64(min(ring/8, 256<<10))); err != nil {
		return fmt.Errorf("setting cfg_ring_reserve: %w", err)
	}
	if n := cfg.TableSize; n != 0 {
		for _, m := range []string{"sysinflight", "targets", "sockstats", "counts", "totals", "map_gens"} {
			spec.Maps[m].MaxEntries = n
		}
		spec.Maps["sampled_blocks"].MaxEntries = 4 * n // live picked blocks outnumber processes
		spec.Maps["stack_seen"].MaxEntries = 2 * n     // an evicted stack id is only sent again
	}
	if cfg.UnwindRows != 0 {
		spec.Maps["unwind_rows"].MaxEntries = cfg.UnwindRows
	}
	return nil
}

// ErrMissingFeature names a kernel capability udstrace cannot work without.
var ErrMissingFeature = errors.New("kernel feature missing")

// Feature is one kernel capability udstrace uses, as found on this machine.
type Feature struct {
	What     string
	Required bool  // udstrace cannot work without it
	Err      error // nil: present
}

// Features probes the kernel for what udstrace uses: the one list checkFeatures and
// udstrace --version read.
func Features() []Feature {
	return []Feature{
		{"BTF (/sys/kernel/btf/vmlinux)", true, statErr("/sys/kernel/btf/vmlinux")},
		{"ring buffer maps (needs ≥ 5.8)", true, features.HaveMapType(ebpf.RingBuf)},
		{"uprobes (CONFIG_UPROBE_EVENTS)", true, statErr("/sys/bus/event_source/devices/uprobe")},
		{"task storage maps", true, features.HaveMapType(ebpf.TaskStorage)},
		{"uprobe_multi links (≥ 6.6; else one uprobe per function)", false, features.HaveBPFLinkUprobeMulti()},
	}
}

func checkFeatures() error {
	for _, c := range Features() {
		if !c.Required {
			continue
		}
		if errors.Is(c.Err, ebpf.ErrNotSupported) || errors.Is(c.Err, os.ErrNotExist) {
			return fmt.Errorf("checking kernel: %w: %s", ErrMissingFeature, c.What)
		}
		if c.Err != nil {
			return fmt.Errorf("checking kernel for %s: %w", c.What, c.Err)
		}
	}
	return nil
}

func statErr(path string) error {
	_, err := os.Stat(path)
	return err
}

// Close detaches every probe and frees the programs and maps. Links are closed all at once:
// each close waits for an RCU grace period (15-75 ms here), and parallel closes share them.
func (t *Tracer) Close() error {
	errs := make([]error, len(t.links))
	var wg sync.WaitGroup
	for i, l := range t.links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.Close()
		}()
	}
	wg.Wait()
	t.links = nil
	t.tables.close()
	closeAll(t.kmem.all()...)
	errs = append(errs, t.objs.Close())
	return errors.Join(errs...)
}

// fillSampleDraws stores stratified quantiles of the exponential distribution of mean n: BPF has
// no floating point, so it picks one of these at random for each gap between samples.
func (t *Tracer) fillSampleDraws(n uint64) error {
	if n == 0 {
		return nil
	}
	size := t.objs.SampleDraws.MaxEntries()
	for i := range size {
		u := (float64(i) + 0.5) / float64(size)
		v := uint64(math.Round(-float64(n) * math.Log1p(-u)))
		if err := t.objs.SampleDraws.Put(i, max(v, 1)); err != nil {
			return fmt.Errorf("filling sample draws: %w", err)
		}
	}
	return nil
}
