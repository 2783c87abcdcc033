package event

// KernelKind names the kernel allocator an allocation came from (the kmem tracepoint it fired).
type KernelKind uint8

const (
	KernelNone    KernelKind = iota
	KernelKmalloc            // kmalloc and its variants (kmem:kmalloc)
	KernelCache              // an object of a named slab cache (kmem:kmem_cache_alloc)
	KernelPage               // pages from the page allocator (kmem:mm_page_alloc)
)

var kernelKindNames = [...]string{KernelNone: "none", KernelKmalloc: "kmalloc", KernelCache: "kmem_cache_alloc", KernelPage: "page"}

func (k KernelKind) String() string {
	if int(k) < len(kernelKindNames) {
		return kernelKindNames[k]
	}
	return "unknown"
}

// Kernel is one allocation the kernel made in a traced task's own context (not an interrupt's),
// or the free of one, by whichever task or context freed it.
type Kernel struct {
	Free bool
	Kind KernelKind // allocations only
	Time uint64
	PID  uint32 // the allocating process; a free: the process that freed (its TID below)
	TID  uint32
	// Owner is, on a free, the process that allocated the object.
	Owner uint32
	Addr  uint64 // the object; pages: their struct page (| 1)
	// Sys is the thread's regs->orig_ax when it entered the kernel: the syscall number if it
	// entered by a syscall (the stack says so), else an exception's error code or an IRQ vector.
	Sys int64
	// Socket is the AF_UNIX socket call the thread was in (InSocket false: none).
	Socket   SocketCall
	InSocket bool
	Req      uint64   // bytes requested (a cache's object size)
	Bytes    uint64   // bytes allocated (the cache's slot size, the pages' size)
	CallSite uint64   // the kernel's caller of the allocator (kmalloc, kmem_cache_alloc)
	Frames   []uint64 // kernel return addresses, innermost first (at most 32); valid during the call only
	Name     string   // allocations: the cache's name ("" for kmalloc and pages); frees: the freeing task's comm
	// Seq numbers the thread's AF_UNIX socket calls (allocations made in one; 0 none).
	Seq uint32
	// End: not an allocation but the end of socket call Seq, which allocated; UserStack is its
	// user stack id (UserRaw: with frames to name from the process's mappings).
	End       bool
	UserStack uint64
	UserRaw   bool
	// Untracked: the kernel's table of live objects was full, so this allocation's free cannot be
	// seen; IRQ, KThread: the free ran in interrupt context or in a kernel thread.
	Untracked, IRQ, KThread bool
}
