// Package report aggregates traced events into per-process totals, per-call-site
// stacks and the socket-path verdict, and formats them as text, JSON, pprof or
// folded stacks.
//
// Feed events to a Builder (Alloc, Proc, Sockets) in event order, then call
// Finish once tracing is over; Finish is where stacks get symbolized. Finish
// may also be called while events keep coming, e.g. to feed Intervals. The
// formats are described in schema.md.
package report

import (
	"time"

	"github.com/udstrace/udstrace/pkg/event"
)

// Schema names the JSON document layout; bump it when a field changes meaning.
const Schema = "udstrace.report/v1"

// Options tunes the report.
type Options struct {
	TopSites    int           // text: how many call sites to print (default 20); JSON has all
	MaxTimeline int           // per process: allocations remembered until its socket counters arrive (default 1<<20, 24 B each)
	MinAge      time.Duration // outstanding blocks at least this old are "long-lived" (0: every outstanding block)
	// MaxProcs: the first MaxProcs processes seen are reported one by one; later ones are folded,
	// once exited, into one entry per (comm, executable) with their sites merged by stack (0: no bound).
	MaxProcs int
	// MaxSites: past this many call sites, the coldest of each process are folded in the report
	// into one entry per process, kind and calling module, totals exact (0: no bound).
	MaxSites int
	// FoldAtEnd defers folding to Settle: in count mode the calls arrive after the processes exit.
	FoldAtEnd bool
	// LiveSockets: a process's first socket call is told (Sockets with FirstTime) as it happens,
	// so allocations before it need no remembering (no timeline: MaxTimeline is unused).
	LiveSockets bool
	// Stacks resolves a stack id to its frames, innermost first (nil: stacks are left empty).
	Stacks func(id uint64) []event.Frame
	// CallerStack turns the return address a free was called from into a one-frame stack id, for
	// the frees of blocks never seen allocated (nil: they are counted without a caller).
	CallerStack func(pid uint32, ret uint64) uint64
}

// Role is what a process does in udstrace's built-in workload.
type Role string

// Workload roles; "" is a process that is not part of the workload.
const (
	RoleServer      Role = "server"
	RoleClientRaw   Role = "client-raw"
	RoleClientStdio Role = "client-stdio"
)

// Meta is what the caller knows about the trace as a whole.
type Meta struct {
	Command []string // what was traced (argv) or ["workload", "echo"]
	// CommandStatus is run -- COMMAND's exit status as a shell tells it (128+N when killed by
	// signal N); nil for anything else.
	CommandStatus *int
	Mode          string          // e.g. "full"
	SampleBytes   uint64          // count mode: stacks sampled every this many bytes on average (0: every call)
	StackMode     string          // "fp", "cfi", "auto"
	Start, End    time.Time       // wall-clock bounds of the trace
	Roles         map[uint32]Role // pid -> workload role
	Lost          LostEvents
	Stacks        StackStats
	Tracer        TracerStats
	RingBytes     uint32      // the ring buffer's size, for the remedy when events were lost (0: not said)
	TableSize     uint32      // --table-size, for the remedy when a kernel table was full (0: not said)
	Warnings      []string    // things the user must know
	Now           uint64      // CLOCK_MONOTONIC ns the report is taken at, to age live blocks; 0: the latest event time seen
	Kernel        *KernelMeta // --kernel: the kernel half's counters (nil: off)

	Allocators map[uint32]Allocator // pid -> the object its malloc binds to
}

// LostEvents is what the kernel side could not deliver, by reason.
type LostEvents struct {
	RingBuffer     uint64 // events dropped: ring buffer full
	StackTruncated uint64 // events whose stack hit the frame limit (the event itself was kept)
	Other          uint64 // calls untracked or discarded for any other reason (the tables' lost calls included)
	Stale          uint64 // of Other: call states discarded after a missed return
	// UntracedProcesses could not be followed (the kernel's process table was full);
	// UntracedCalls, part of Other, are the allocator calls they made.
	UntracedProcesses uint64
	UntracedCalls     uint64
	TableFull         TableFull // failed inserts, by kernel table
}

// TableFull counts the inserts each kernel table refused (full, or no memory): the first seven
// lose an event each (part of lost_events), the last four lose none.
type TableFull struct {
	Threads       uint64 `json:"threads"`            // a thread's state: the call was not traced
	Syscalls      uint64 `json:"syscalls_in_flight"` // a memory syscall was not traced
	Processes     uint64 `json:"processes"`          // a process was not traced (calls: untraced_process_calls)
	Counts        uint64 `json:"counts"`             // count mode: a call was not counted
	Totals        uint64 `json:"totals"`             // sampling: a call is missing from the exact totals
	SampledBlocks uint64 `json:"sampled_blocks"`     // sampling: a picked block's free cannot be reported
	Sockets       uint64 `json:"socket_counters"`    // an AF_UNIX socket call was not counted
	Modules       uint64 `json:"modules"`            // frames in a file stayed raw addresses
	ProcessMaps   uint64 `json:"process_maps"`       // a process's threads shared no mapping cache
	MapGens       uint64 `json:"map_generations"`    // every mapping cache was dropped instead of one
	StackIDs      uint64 `json:"stack_ids"`          // a stack's frames were sent again
}

// LostCalls is the inserts that lost an event.
func (t TableFull) LostCalls() uint64 {
	return t.Threads + t.Syscalls + t.Counts + t.Totals + t.SampledBlocks + t.Sockets
}

// Any reports whether any insert failed.
func (t TableFull) Any() bool { return t != TableFull{} }

// Symbolizer expands one frame into source frames, inlined ones first; it may return nil.
type Symbolizer interface {
	Symbolize(f event.Frame) []SymFrame
}

// TailCaller is a Symbolizer that also puts back the frames of functions that left by a tail
// call (a jump, leaving no return address): between a frame and its caller, innermost first,
// as frames in files (Return set) to symbolize like the others; nil when there are none.
type TailCaller interface {
	TailCalls(callee, caller event.Frame) []event.Frame
}

// SymFrame is one source-level frame.
type SymFrame struct {
	Function string
	Offset   uint64 // from the function's start (meaningful on the non-inlined frame)
	File     string
	Line     int
	Inlined  bool
}

// Report is the JSON document; WriteJSON and WriteText render it.
type Report struct {
	Schema          string     `json:"schema"`
	Command         []string   `json:"command"`
	CommandStatus   *int       `json:"command_status,omitempty"` // run -- COMMAND: its exit status (128+N: killed by signal N)
	Mode            string     `json:"mode"`
	SampleBytes     uint64     `json:"sample_bytes"` // count mode: mean bytes between sampled calls; 0: not sampled
	StackMode       string     `json:"stack_mode"`
	Start           time.Time  `json:"start"`
	End             time.Time  `json:"end"`
	DurationSeconds float64    `json:"duration_seconds"`
	LostEvents      uint64     `json:"lost_events"`
	LostDetail      LostDetail `json:"lost_detail"`
	// Unreliable names the figures lost events make unreliable (outstanding blocks, unmatched
	// frees: a lost free leaves a block outstanding, a lost allocation makes its free unmatched).
	Unreliable []string    `json:"unreliable"`
	Stacks     StackStats  `json:"stacks"`
	Tracer     TracerStats `json:"tracer"`
	Warnings   []string    `json:"warnings"`
	Processes  []Process   `json:"processes"`
	Sites      []Site      `json:"sites"`
	// Frees of blocks the trace never saw allocated, by the caller of free (full mode).
	UnmatchedFreeSites []FreeSite `json:"unmatched_free_sites"`
	SocketPath         SocketPath `json:"socket_path"`
	// Kernel, KernelSites: the kernel's own allocations in traced tasks (--kernel; absent when off).
	Kernel        *KernelReport `json:"kernel,omitempty"`
	KernelSites   []KernelSite  `json:"kernel_sites,omitempty"`
	AgeReference  uint64        `json:"age_reference_time"` // monotonic ns the outstanding ages are measured at
	MinAgeSeconds float64       `json:"min_age_seconds"`    // Options.MinAge: the threshold of outstanding_older_than_min_age

	// FileMappings are the files the processes mapped, by process and file, most bytes first.
	FileMappings []FileMapping `json:"file_mappings"`
	topSites     int           // text only
	withFileMaps bool          // views show file mappings' sites too (IncludeFileMaps)
	lazy         *lazyStacks   // a Snapshot's stacks, symbolized on demand (SiteStack)

	// Each process's memory over time, and its peak (timeline.go; empty in live snapshots).
	Timeline []Timeline `json:"timeline"`
	Peak     []Peak     `json:"peak"`
}

// TracerStats is what the trace cost udstrace itself.
type TracerStats struct {
	RingRecords    uint64  `json:"ring_records"`     // records read from the event ring
	RingBytes      uint64  `json:"ring_bytes"`       // their bytes, with the ring's 8-byte headers
	CPUUserSeconds float64 `json:"cpu_user_seconds"` // udstrace's own CPU so far (not the traced programs')
	CPUSysSeconds  float64 `json:"cpu_sys_seconds"`
	PeakRSSBytes   uint64  `json:"peak_rss_bytes"` // udstrace's peak resident memory (VmHWM)
}

// StackStats is how the stacks came out: none of these is a lost event.
type StackStats struct {
	Events   uint64 `json:"events"`   // events that carried a stack
	Distinct uint64 `json:"distinct"` // stacks the kernel sent (each distinct stack once, again after an eviction)
	// Fallback: stacks finished in user space from a copy, because a module's unwind table was
	// still loading (or --stack cfi: every stack).
	Fallback uint64 `json:"fallback"`
	// Truncated: stacks cut at a module whose table was loading, with no room for a copy.
	Truncated  uint64 `json:"truncated"`
	Collisions uint64 `json:"collisions"` // stack ids shared by two stacks: sent apart, never merged
	// Busy: stacks the kernel could not follow because a mapping could not be read (another
	// thread held the mmap lock for writing): finished from a copy, or cut (counted as truncated).
	Busy  uint64 `json:"mmap_lock_busy"`
	Depth uint64 `json:"depth_limit"` // stacks that hit the 128-frame limit
	Memo  uint64 `json:"memo"`        // stacks known without walking: the thread's last walk, same registers and stack words
	// Unwind tables the kernel was given: modules, pages of rows, rows, and the rows it can hold.
	TableModules  int     `json:"table_modules"`
	TablePages    int     `json:"table_pages"`
	TableCached   int     `json:"table_pages_from_cache"` // of those, pages compiled by an earlier trace
	TableRows     uint64  `json:"table_rows"`
	TableCapacity uint64  `json:"table_capacity"`
	TableSeconds  float64 `json:"table_load_seconds"` // CPU-side time compiling and loading them
}

// LostDetail breaks lost_events down; stack_truncated is not part of the total (those events arrived).
type LostDetail struct {
	RingBuffer        uint64    `json:"ring_buffer"`
	StackTruncated    uint64    `json:"stack_truncated"`
	Other             uint64    `json:"other"`
	Stale             uint64    `json:"stale"`
	UntracedProcesses uint64    `json:"untraced_processes"`
	UntracedCalls     uint64    `json:"untraced_process_calls"`
	TableFull         TableFull `json:"table_full"`
}

// Allocator is the object a process's malloc family binds to: its heap calls are probed there.
type Allocator struct {
	Name   string `json:"name"`   // glibc, musl, jemalloc, tcmalloc, mimalloc, unknown
	Object string `json:"object"` // the file
}

// Process holds one process's totals.
type Process struct {
	PID              uint32               `json:"pid"`
	PPID             uint32               `json:"ppid"`
	Comm             string               `json:"comm"`
	Exe              string               `json:"exe"`
	Role             Role                 `json:"role"`
	Allocator        *Allocator           `json:"allocator"` // null: no object it mapped exports malloc (see warnings)
	Exited           bool                 `json:"exited"`
	ExitCode         *int                 `json:"exit_code"`
	ExitSignal       int                  `json:"exit_signal,omitempty"`
	FoldedProcesses  int                  `json:"folded_processes,omitempty"` // > 0: pid 0 stands for this many exited processes
	Allocations      uint64               `json:"allocations"`
	AllocatedBytes   uint64               `json:"allocated_bytes"`
	HeapCalls        uint64               `json:"heap_calls"`
	HeapBytes        uint64               `json:"heap_bytes"`
	HeapByKind       map[string]CallCount `json:"heap_calls_by_kind"`
	Frees            uint64               `json:"frees"`
	FreeNullCalls    uint64               `json:"free_null_calls"` // free(NULL), part of heap_calls_by_kind.free.calls
	UnmatchedFrees   uint64               `json:"unmatched_frees"`
	OutstandingCount uint64               `json:"outstanding_count"`
	OutstandingBytes uint64               `json:"outstanding_bytes"`
	MmapCalls        uint64               `json:"mmap_calls"`
	MmapBytes        uint64               `json:"mmap_bytes"`
	// Of the mmaps, those of files: mappings, not allocations (allocations and outstanding
	// count anonymous memory only); the bytes still mapped at the end.
	MappedFileCalls            uint64                `json:"mapped_file_calls"`
	MappedFileBytes            uint64                `json:"mapped_file_bytes"`
	MappedFileOutstandingBytes uint64                `json:"mapped_file_outstanding_bytes"`
	MremapCalls                uint64                `json:"mremap_calls"`
	MremapBytes                uint64                `json:"mremap_bytes"`
	MunmapCalls                uint64                `json:"munmap_calls"`
	BrkCalls                   uint64                `json:"brk_calls"`
	BrkBytes                   uint64                `json:"brk_bytes"`
	InsideAllocator            map[string]KernelReqs `json:"inside_allocator"`
	SocketSyscalls             uint64                `json:"socket_syscalls"`
	SocketSyscallsByName       map[string]uint64     `json:"socket_syscalls_by_name"`
	FirstSocketTime            *uint64               `json:"first_socket_time"`
	notTraced                  bool                  // count mode: frees, outstanding and memory syscalls not traced (nottraced.go)

	// The process's cgroup v2 path and the container and Kubernetes pod it names (cgroupinfo); omitted when not known.
	Cgroup      string `json:"cgroup,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	PodUID      string `json:"pod_uid,omitempty"`
}

// CallCount counts calls of one allocator function.
type CallCount struct {
	Calls  uint64 `json:"calls"`
	Bytes  uint64 `json:"bytes"`
	Failed uint64 `json:"failed"`
}

// KernelReqs counts the memory syscalls an allocator made on its own behalf.
type KernelReqs struct {
	Count uint64 `json:"count"`
	Bytes uint64 `json:"bytes"`
}

// FreeSite counts one caller's frees of blocks the trace never saw allocated: allocated before
// the trace began, left out by --min-size, or allocated inside libc without malloc (e.g. a
// thread's tcache, freed when the thread exits).
type FreeSite struct {
	PID    uint32       `json:"pid"`
	Comm   string       `json:"comm"`
	Count  uint64       `json:"count"`
	Caller []StackFrame `json:"caller"` // the caller's frame, with inlined entries first
}

// Site is one call site: a (process, kind, stack) triple.
type Site struct {
	ID               int          `json:"id"`
	PID              uint32       `json:"pid"`
	Comm             string       `json:"comm"`
	Kind             string       `json:"kind"`
	Count            uint64       `json:"count"`
	Failed           uint64       `json:"failed"`
	Bytes            uint64       `json:"bytes"`
	OutstandingCount uint64       `json:"outstanding_count"`
	OutstandingBytes uint64       `json:"outstanding_bytes"`
	Stack            []StackFrame `json:"stack"`
	// Added after the first v1 release; a leak keeps getting older, a cache stops growing.
	OldestOutstandingAgeSeconds float64    `json:"oldest_outstanding_age_seconds"`
	OutstandingOlderThanMinAge  BlockCount `json:"outstanding_older_than_min_age"`
	// FoldedSites > 0: this entry stands for that many cold sites past --max-sites, of one process,
	// kind and calling module; its stack is one frame naming the module.
	FoldedSites int `json:"folded_sites,omitempty"`
	// FileBacked: an mmap (or mremap) of a file, a mapping rather than an allocation; left out
	// of the views unless asked (--include-file-maps).
	FileBacked bool `json:"file_backed,omitempty"`
	// The thread that made every call of the site (its tid and latest name), or only how many
	// threads did (0 and omitted: not known, as in count mode).
	TID       uint32 `json:"tid,omitempty"`
	Thread    string `json:"thread,omitempty"`
	Threads   int    `json:"threads,omitempty"`
	notTraced bool   // count mode: outstanding not traced (nottraced.go)
}

// BlockCount counts live blocks and their bytes.
type BlockCount struct {
	Count uint64 `json:"count"`
	Bytes uint64 `json:"bytes"`
}

// StackFrame is one source frame; an address with inlined calls yields several, sharing frame/addr.
type StackFrame struct {
	Frame      int    `json:"frame"`
	Addr       Hex    `json:"addr"`
	Module     string `json:"module"`
	BuildID    string `json:"build_id"`
	FileOffset Hex    `json:"file_offset"`
	Symbol     string `json:"symbol"`
	Function   string `json:"function"`
	Offset     uint64 `json:"offset"`
	File       string `json:"file"`
	Line       int    `json:"line"`
	Inlined    bool   `json:"inlined"`
	TailCall   bool   `json:"tail_call"` // put back from DWARF call sites: a function that left by a tail call
}

// SocketPath is the verdict on "the AF_UNIX socket path allocates nothing in user space".
type SocketPath struct {
	// Applies says the verdict means something here: the echo workload ran, or a process made
	// AF_UNIX socket calls. When false nothing is concluded (holds false, reason and conclusion
	// empty) and the text report leaves the section out.
	Applies               bool            `json:"applies"`
	Syscalls              uint64          `json:"syscalls"`
	UserAllocations       uint64          `json:"user_allocations"`
	UserBytes             uint64          `json:"user_bytes"`
	UserAllocationSites   []int           `json:"user_allocation_sites"`
	UnresolvedAllocations uint64          `json:"unresolved_allocations"`
	Holds                 bool            `json:"holds"`
	Reason                string          `json:"reason"`
	Conclusion            string          `json:"conclusion"`
	Processes             []SocketProcess `json:"processes"`
	Kernel                *SocketKernel   `json:"kernel,omitempty"` // --kernel: the kernel's half
}

// SocketProcess is one considered process in the verdict.
type SocketProcess struct {
	PID                   uint32            `json:"pid"`
	Role                  Role              `json:"role"`
	Comm                  string            `json:"comm"`
	Syscalls              uint64            `json:"syscalls"`
	SyscallsByName        map[string]uint64 `json:"syscalls_by_name"`
	AllocsAfterFirstCall  uint64            `json:"allocations_after_first_socket_call"`
	BytesAfterFirstCall   uint64            `json:"bytes_after_first_socket_call"`
	AfterIsUpperBound     bool              `json:"after_is_upper_bound"`
	UserAllocations       uint64            `json:"user_allocations"`
	UnresolvedAllocations uint64            `json:"unresolved_allocations"`
	Sources               []Source          `json:"sources"`
	Kernel                *SocketKernel     `json:"kernel,omitempty"`
}

// Source is one site that allocated after a process's first socket call.
type Source struct {
	Site     int    `json:"site"`
	Kind     string `json:"kind"`
	Count    uint64 `json:"count"`
	Bytes    uint64 `json:"bytes"`
	Function string `json:"function"` // first frame outside the allocator
	Entry    string `json:"entry"`    // the libc function the program called (e.g. fgetc), if libc is on the way
	Caller   string `json:"caller"`   // first frame outside libc (e.g. main)
}

// kindSlots sizes per-kind arrays.
const kindSlots = event.KindCount

// FileMapping is one process's mappings of one file.
type FileMapping struct {
	PID              uint32 `json:"pid"`
	Comm             string `json:"comm"`
	File             string `json:"file"`
	Maps             uint64 `json:"maps"`              // mmap calls
	Bytes            uint64 `json:"bytes"`             // bytes mapped, all calls together
	OutstandingBytes uint64 `json:"outstanding_bytes"` // still mapped at the end
}
