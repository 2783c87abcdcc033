// Package event is the tracer's decoded event model, shared by the loader and the report.
package event

// Kind names what a traced call or syscall was; allocator kinds are named after the libc function called.
type Kind uint8

const (
	KindNone Kind = iota
	Malloc
	Calloc
	Realloc
	ReallocArray
	Free
	PosixMemalign
	AlignedAlloc
	Memalign
	Valloc
	Pvalloc
	Mmap
	Munmap
	Mremap
	Brk
	// Allocators' own entry points, which programs call directly and which never reach malloc:
	// jemalloc's *allocx, the C++ operators jemalloc, tcmalloc and mimalloc define, mimalloc's mi_*.
	Mallocx
	Rallocx
	Dallocx
	Sdallocx
	OperatorNew
	OperatorNewArray
	OperatorDelete
	OperatorDeleteArray
	MiZalloc
	MiMallocn
	MiReallocn
	MiMallocAligned
	MiZallocAligned
	MiReallocAligned
	Xallocx // jemalloc's resize in place (never moves the block)
	kindCount
)

// KindCount sizes arrays indexed by Kind.
const KindCount = int(kindCount)

var kindNames = [...]string{
	KindNone: "none", Malloc: "malloc", Calloc: "calloc", Realloc: "realloc",
	ReallocArray: "reallocarray", Free: "free", PosixMemalign: "posix_memalign",
	AlignedAlloc: "aligned_alloc", Memalign: "memalign", Valloc: "valloc", Pvalloc: "pvalloc",
	Mmap: "mmap", Munmap: "munmap", Mremap: "mremap", Brk: "brk",
	Mallocx: "mallocx", Rallocx: "rallocx", Dallocx: "dallocx", Sdallocx: "sdallocx",
	OperatorNew: "operator new", OperatorNewArray: "operator new[]",
	OperatorDelete: "operator delete", OperatorDeleteArray: "operator delete[]",
	MiZalloc: "mi_zalloc", MiMallocn: "mi_mallocn", MiReallocn: "mi_reallocn",
	MiMallocAligned: "mi_malloc_aligned", MiZallocAligned: "mi_zalloc_aligned", MiReallocAligned: "mi_realloc_aligned", Xallocx: "xallocx",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// KindByName maps a libc symbol name to its kind; ok is false for names udstrace does not probe.
func KindByName(name string) (Kind, bool) {
	for k, n := range kindNames {
		if n == name && k != int(KindNone) {
			return Kind(k), true
		}
	}
	return KindNone, false
}

// IsHeap reports whether k is a malloc-family call (an allocation or a free made through the allocator).
func (k Kind) IsHeap() bool { return k >= Malloc && k <= Pvalloc || k >= Mallocx && k < kindCount }

// IsFree reports whether k releases a block: free, dallocx, sdallocx, operator delete.
func (k Kind) IsFree() bool {
	return k == Free || k == Dallocx || k == Sdallocx || k == OperatorDelete || k == OperatorDeleteArray
}

// IsRealloc reports whether k resizes an old block (its first argument), perhaps moving it.
func (k Kind) IsRealloc() bool {
	return k == Realloc || k == ReallocArray || k == Rallocx || k == MiReallocn || k == MiReallocAligned || k == Xallocx
}

// IsAlloc reports whether k allocates a new block (not a resize, not a free).
func (k Kind) IsAlloc() bool { return k.IsHeap() && !k.IsFree() && !k.IsRealloc() }

// IsSyscall reports whether k is a memory request made to the kernel directly.
func (k Kind) IsSyscall() bool { return k >= Mmap && k <= Brk }

// Frame is one user-stack frame: a runtime address, and where it falls in a mapped file.
type Frame struct {
	Addr       uint64 // runtime address in the process
	Module     string // path of the mapped file as the process saw it; "" when the address is in no file mapping
	BuildID    string // hex GNU build-id of Module, when it has one
	FileOffset uint64 // offset of Addr inside Module's file
	ModuleKey  string // identity of the file (device:inode), stable across processes
	Return     bool   // Addr is a return address: the call instruction is just before it
}

// Alloc is one allocator call, free or memory syscall made by a traced thread.
type Alloc struct {
	Time    uint64 // CLOCK_MONOTONIC ns
	PID     uint32
	TID     uint32
	Comm    string
	Kind    Kind
	Size    uint64 // bytes asked (nmemb*size for calloc/reallocarray); for brk the growth in bytes (may be negative as two's complement: see Shrink)
	Addr    uint64 // address returned (allocations), freed (free, munmap), or new address (mremap)
	OldAddr uint64 // realloc's/mremap's old address
	OldSize uint64 // mremap's old length
	Failed  bool   // the call returned NULL / an error: nothing was allocated
	Shrink  bool   // brk moved the break down, or munmap-like release
	Inside  Kind   // not KindNone: made inside this allocator call (e.g. malloc's own mmap), not by the program itself
	Flags   uint64 // mmap: prot<<32 | flags
	FD      int32  // mmap: file descriptor (-1 for anonymous)
	Caller  uint64 // free: the return address in its caller (0 if unknown)
	Sampled bool   // count mode: a call sent on its own (picked by sampling, or needing a copied stack)
	// StackID names the user stack (pkg/kstack): a hash of its frames, the same in every process;
	// 0: none. Truncated: the stack stops early (a module's unwind table was still loading).
	StackID   uint64
	Truncated bool
	RawFrames bool // the stack has raw addresses the kernel could not name: user space names them
	// Weighted (full mode with sampling): a picked call standing for Weight calls, or the free of a
	// picked block; such events update sites and blocks, and the process totals come from the kernel.
	Weighted bool
	Weight   uint64
	// Untracked: a picked block the kernel's table had no room for (counted lost): its free will
	// not be reported, so it must not be held as outstanding.
	Untracked bool
}

// ProcKind says what happened to a process.
type ProcKind uint8

const (
	ProcExec ProcKind = iota + 1
	ProcFork
	ProcExit
	ProcRename // a thread's name changed (Proc.TID, Proc.Comm), or a new thread is not named as its leader
)

// Proc is a process life-cycle event.
type Proc struct {
	Time     uint64
	Kind     ProcKind
	PID      uint32
	PPID     uint32 // ProcFork: the parent
	Comm     string // the process's name (its thread-group leader's); ProcRename: the thread's new name
	TID      uint32 // ProcRename: the thread renamed
	Exe      string // ProcExec: the file executed
	ExitCode int    // ProcExit: exit status as wait(2) encodes it (status<<8 | signal)
	// ProcFork: the child runs in its parent's address space until it execs (vfork, or clone with
	// CLONE_VM but not CLONE_THREAD): what it allocates there is the parent's to free.
	SharedVM bool
}

// SocketCall names the socket-path syscalls counted as evidence that the socket path ran.
type SocketCall uint8

const (
	SockSocket SocketCall = iota
	SockSocketpair
	SockBind
	SockListen
	SockAccept
	SockAccept4
	SockConnect
	SockRead
	SockWrite
	SockSendto
	SockRecvfrom
	SockSendmsg
	SockRecvmsg
	SockClose
	SocketCallCount
)

var socketCallNames = [...]string{
	"socket", "socketpair", "bind", "listen", "accept", "accept4", "connect",
	"read", "write", "sendto", "recvfrom", "sendmsg", "recvmsg", "close",
}

// SocketCallByName is the call named name (as String gives it).
func SocketCallByName(name string) (SocketCall, bool) {
	for i, n := range socketCallNames {
		if n == name {
			return SocketCall(i), true
		}
	}
	return SocketCallCount, false
}

func (s SocketCall) String() string {
	if int(s) < len(socketCallNames) {
		return socketCallNames[s]
	}
	return "unknown"
}

// SocketStats counts one process's syscalls on AF_UNIX sockets.
type SocketStats struct {
	PID       uint32
	FirstTime uint64 // time of the first counted call; 0 when none
	Counts    [SocketCallCount]uint64
}

// Total is the number of counted socket syscalls.
func (s SocketStats) Total() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}
