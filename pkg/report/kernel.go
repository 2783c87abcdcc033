package report

import (
	"cmp"
	"slices"
	"strings"

	"github.com/udstrace/udstrace/pkg/event"
)

// The kernel's half (--kernel): allocations the kernel made in a traced task's own context, by
// site (process, allocator, cache, kernel stack, the call the task was in), and their frees,
// paired by address across processes: the reader that frees what the writer allocated.

// KernelFrame is a kernel stack frame as the session named it (pkg/symbolize's kallsyms).
type KernelFrame struct {
	Frame    int    `json:"frame"`
	Addr     uint64 `json:"addr"`
	Module   string `json:"module"` // "vmlinux" or the loadable module's name
	Function string `json:"function"`
	Offset   uint64 `json:"offset"`
	Symbol   string `json:"symbol"` // module!function+0xoff, or 0xADDR
}

// KernelMeta is what the tracer's kernel counters said (loader.KernelStats), for the report.
type KernelMeta struct {
	IRQ      uint64 // allocations in interrupt context while a traced task was current: left out
	LiveFull uint64 // allocations whose free cannot be paired (the kernel's live table was full)
	NoStack  uint64 // allocations without a kernel stack
	Deep     uint64 // kernel stacks cut at their 32 innermost frames
	RingLost uint64 // kernel events the ring had no room for
	// Messages is what each client of the echo workload writes (0: not the echo workload).
	Messages int
}

// KernelReport is the whole kernel half: JSON "kernel".
type KernelReport struct {
	Allocations uint64 `json:"allocations"`
	Bytes       uint64 `json:"bytes"`
	Frees       uint64 `json:"frees"`
	// FreedByOther: frees made by another process, or in interrupt context, or by a kernel thread.
	FreedByOther uint64 `json:"freed_by_other"`
	Outstanding  uint64 `json:"outstanding"`
	// Untracked: allocations whose free could not be watched (table full); never outstanding.
	Untracked        uint64 `json:"untracked"`
	InterruptLeftOut uint64 `json:"interrupt_left_out"`
	NoStack          uint64 `json:"no_stack"`
	DeepStacks       uint64 `json:"deep_stacks"`
	Lost             uint64 `json:"lost"`
}

// KernelSite is one kernel allocation site: JSON "kernel_sites[]".
type KernelSite struct {
	ID    int    `json:"id"`
	PID   uint32 `json:"pid"`
	Comm  string `json:"comm"`
	Kind  string `json:"kind"`  // kmalloc, kmem_cache_alloc, page
	Cache string `json:"cache"` // the slab cache's name (kmem_cache_alloc; truncated at 31 characters)
	// Entry is how the task entered the kernel: "syscall", "page fault" or "other".
	Entry string `json:"entry"`
	// Syscall is the syscall number when Entry is "syscall", else -1; SocketCall names the
	// AF_UNIX socket call the task was in ("" none).
	Syscall int64 `json:"syscall"`
	// UserFault: the stack passes through the page-fault handler: a fault on user memory taken
	// inside the kernel (copy_to_user into a buffer not yet touched), the process's own memory.
	UserFault        bool   `json:"user_fault,omitempty"`
	SocketCall       string `json:"socket_call"`
	Count            uint64 `json:"count"`
	BytesRequested   uint64 `json:"bytes_requested"`
	Bytes            uint64 `json:"bytes"`
	OutstandingCount uint64 `json:"outstanding_count"`
	OutstandingBytes uint64 `json:"outstanding_bytes"`
	// OutstandingAtExit: blocks still live when the allocating process exited.
	OutstandingAtExit uint64        `json:"outstanding_at_exit"`
	FreedBy           []KernelFreer `json:"freed_by"`
	Stack             []KernelFrame `json:"stack"`
	// UserStacks: the user stacks of the socket calls that made the site's allocations, most
	// calls first (only for AF_UNIX socket calls: their user stack is taken as they leave).
	UserStacks []KernelUserStack `json:"user_stacks,omitempty"`
}

// KernelUserStack is one user stack under a kernel site: how many of its allocations (and bytes)
// the socket calls made from there.
type KernelUserStack struct {
	Count uint64       `json:"count"`
	Bytes uint64       `json:"bytes"`
	Stack []StackFrame `json:"stack"`
}

// KernelFreer is who freed a site's blocks: a process (by pid), or a context.
type KernelFreer struct {
	PID     uint32 `json:"pid"`
	Comm    string `json:"comm"`
	Context string `json:"context"` // "task", "interrupt", "kernel thread"
	Count   uint64 `json:"count"`
}

type ksiteKey struct {
	p     *proc
	kind  event.KernelKind
	cache string
	stack int64
	sock  int // 1 + socket call, 0 none
	sys   int64
}

type ksite struct {
	KernelSite
	p     *proc
	sock  int
	freed map[KernelFreer]uint64 // Count 0 in the key
	users map[uint64]*[2]uint64  // user stack id -> calls, bytes
}

// kpending are the allocations of a thread's socket call in progress, until its user stack comes.
type kpending struct {
	seq   uint32
	sites []*ksite
	bytes []uint64
}

type kblock struct {
	s     *ksite
	bytes uint64
}

type kernelState struct {
	sites map[ksiteKey]*ksite
	order []*ksite
	live  map[uint64]kblock
	calls map[uint32]*kpending // by tid
	frees uint64
	other uint64
	untr  uint64
}

func (b *Builder) kernel() *kernelState {
	if b.kern == nil {
		b.kern = &kernelState{sites: map[ksiteKey]*ksite{}, live: map[uint64]kblock{}, calls: map[uint32]*kpending{}}
	}
	return b.kern
}

// entryOf tells from the outermost frames how the task entered the kernel.
func entryOf(frames []KernelFrame) string {
	for _, f := range frames {
		switch {
		case f.Function == "do_syscall_64" || strings.HasPrefix(f.Function, "entry_SYSCALL_64"):
			return "syscall"
		case f.Function == "exc_page_fault" || f.Function == "asm_exc_page_fault":
			return "page fault"
		}
	}
	return "other"
}

// trimKernelFrames drops the tracing machinery's own frames above the allocator: everything up
// to the last of them among the innermost few (the BPF program itself, when kallsyms named it,
// bpf_trace_run*, the tracepoint's iterator).
func trimKernelFrames(frames []KernelFrame) []KernelFrame {
	cut := 0
	for i := 0; i < len(frames) && i < 6; i++ {
		fn := frames[i].Function
		if frames[i].Module == "bpf" || strings.HasPrefix(fn, "bpf_trace_run") || strings.HasPrefix(fn, "__bpf_trace_") ||
			strings.HasPrefix(fn, "__traceiter_") || strings.HasPrefix(fn, "bpf_prog_") || strings.HasPrefix(fn, "__bpf_prog_") {
			cut = i + 1
		}
	}
	out := slices.Clone(frames[cut:])
	for j := range out {
		out[j].Frame = j
	}
	return out
}

// KernelAlloc records a kernel allocation made in a traced task, its stack named (frames as
// the kernel gave them, innermost first; stackID the same for the same frames, -1: none). The caller holds whatever guards the builder.
func (b *Builder) KernelAlloc(k *event.Kernel, stackID int64, frames []KernelFrame) {
	ks := b.kernel()
	p := b.procFor(k.PID)
	sock := 0
	if k.InSocket {
		sock = 1 + int(k.Socket)
	}
	entry := entryOf(frames)
	sys := int64(-1)
	if entry == "syscall" {
		sys = k.Sys
	}
	key := ksiteKey{p: p, kind: k.Kind, cache: k.Name, stack: stackID, sock: sock, sys: sys}
	s := ks.sites[key]
	if s == nil {
		s = &ksite{p: p, sock: sock, freed: map[KernelFreer]uint64{}}
		s.ID = len(ks.order) + 1
		s.PID, s.Kind, s.Cache, s.Entry, s.Syscall = k.PID, k.Kind.String(), k.Name, entry, sys
		if sock != 0 {
			s.SocketCall = k.Socket.String()
		}
		s.Stack = trimKernelFrames(frames)
		for _, f := range s.Stack {
			s.UserFault = s.UserFault || f.Function == "handle_mm_fault"
		}
		ks.sites[key] = s
		ks.order = append(ks.order, s)
	}
	s.Count++
	s.BytesRequested += k.Req
	s.Bytes += k.Bytes
	if k.InSocket && k.Seq != 0 {
		pc := ks.calls[k.TID]
		if pc == nil || pc.seq != k.Seq {
			pc = &kpending{seq: k.Seq} // an earlier call's end was lost: its allocations keep no user stack
			ks.calls[k.TID] = pc
		}
		pc.sites = append(pc.sites, s)
		pc.bytes = append(pc.bytes, k.Bytes)
	}
	if k.Untracked {
		ks.untr++
		return
	}
	if old, ok := ks.live[k.Addr]; ok {
		// Freed without a tracepoint the kernel fires (or its free was lost): not live any more.
		old.s.OutstandingCount--
		old.s.OutstandingBytes -= old.bytes
	}
	ks.live[k.Addr] = kblock{s: s, bytes: k.Bytes}
	s.OutstandingCount++
	s.OutstandingBytes += k.Bytes
}

// KernelCallEnd gives the allocations of thread tid's socket call seq their user stack.
func (b *Builder) KernelCallEnd(tid, seq uint32, userStack uint64) {
	ks := b.kernel()
	pc := ks.calls[tid]
	if pc == nil || pc.seq != seq {
		return
	}
	delete(ks.calls, tid)
	for i, s := range pc.sites {
		if s.users == nil {
			s.users = map[uint64]*[2]uint64{}
		}
		u := s.users[userStack]
		if u == nil {
			u = &[2]uint64{}
			s.users[userStack] = u
		}
		u[0]++
		u[1] += pc.bytes[i]
	}
}

// KernelFree records the free of a kernel block a traced task allocated.
func (b *Builder) KernelFree(k *event.Kernel) {
	ks := b.kernel()
	blk, ok := ks.live[k.Addr]
	if !ok {
		return
	}
	delete(ks.live, k.Addr)
	s := blk.s
	s.OutstandingCount--
	s.OutstandingBytes -= blk.bytes
	if s.p != nil && s.p.exited && k.Time > s.p.exitTime {
		s.OutstandingAtExit++
	}
	ks.frees++
	who := KernelFreer{PID: k.PID, Comm: k.Name, Context: "task"}
	switch {
	case k.IRQ:
		who = KernelFreer{Context: "interrupt"}
	case k.KThread:
		who.Context = "kernel thread"
	}
	if who.Context != "task" || k.PID != s.PID {
		ks.other++
	}
	s.freed[who]++
}

// procFor is the latest incarnation of pid, if the builder has seen it.
func (b *Builder) procFor(pid uint32) *proc { return b.cur[pid] }

// kernelReport fills the report's kernel half; nil when no kernel event came (--kernel off).
func (b *Builder) kernelReport(r *Report, meta Meta, userStack func(id uint64) []StackFrame) {
	ks := b.kern
	if ks == nil && meta.Kernel == nil {
		return
	}
	if ks == nil {
		ks = b.kernel()
	}
	kr := &KernelReport{Frees: ks.frees, FreedByOther: ks.other, Untracked: ks.untr}
	if m := meta.Kernel; m != nil {
		kr.InterruptLeftOut, kr.NoStack, kr.DeepStacks, kr.Lost = m.IRQ, m.NoStack, m.Deep, m.RingLost
	}
	r.KernelSites = []KernelSite{}
	for _, s := range ks.order {
		site := s.KernelSite
		if s.p != nil {
			site.Comm = s.p.comm
			if s.p.exited {
				site.OutstandingAtExit += s.OutstandingCount // still live when the report is made
			}
		}
		for id, u := range s.users {
			us := KernelUserStack{Count: u[0], Bytes: u[1]}
			if id != 0 && userStack != nil {
				us.Stack = userStack(id)
			}
			site.UserStacks = append(site.UserStacks, us)
		}
		slices.SortFunc(site.UserStacks, func(a, b KernelUserStack) int {
			return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(len(a.Stack), len(b.Stack)))
		})
		site.FreedBy = []KernelFreer{}
		for who, n := range s.freed {
			who.Count = n
			site.FreedBy = append(site.FreedBy, who)
		}
		slices.SortFunc(site.FreedBy, func(a, b KernelFreer) int {
			return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.PID, b.PID), cmp.Compare(a.Context, b.Context))
		})
		kr.Allocations += s.Count
		kr.Bytes += s.Bytes
		kr.Outstanding += s.OutstandingCount
		r.KernelSites = append(r.KernelSites, site)
	}
	r.Kernel = kr
}
