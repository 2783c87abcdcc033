package report

import (
	"strings"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

func kframes(names ...string) []KernelFrame {
	var out []KernelFrame
	for i, n := range names {
		out = append(out, KernelFrame{Frame: i, Addr: 0xffffffff81000000 + uint64(i), Module: "vmlinux", Function: n, Symbol: "vmlinux!" + n})
	}
	return out
}

var kSend = kframes("__bpf_trace_kmalloc", "__kmalloc_node_track_caller_noprof", "kmalloc_reserve", "__alloc_skb",
	"sock_alloc_send_pskb", "unix_stream_sendmsg", "sock_write_iter", "vfs_write", "ksys_write", "do_syscall_64", "entry_SYSCALL_64_after_hwframe")

var kFault = kframes("__alloc_frozen_pages_noprof", "do_anonymous_page", "handle_mm_fault", "exc_page_fault", "asm_exc_page_fault")

func kalloc(t uint64, pid uint32, addr uint64, call event.SocketCall, in bool) *event.Kernel {
	return &event.Kernel{Time: t, PID: pid, TID: pid, Kind: event.KernelKmalloc, Addr: addr, Req: 300, Bytes: 512, Sys: 1, Socket: call, InSocket: in}
}

func kfree(t uint64, pid uint32, addr uint64) *event.Kernel {
	return &event.Kernel{Free: true, Time: t, PID: pid, TID: pid, Addr: addr, Name: "peer"}
}

// TestKernelPairsFreesAcrossProcesses: the reader's frees of the writer's skbs are paired with
// them, so nothing the writer allocated is outstanding at its exit; a block freed after the exit
// is; a block whose address is allocated again unseen-freed is not left live twice; the
// verdict counts the write path per message and the conclusion says so.
func TestKernelPairsFreesAcrossProcesses(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	allocs, socks := echoRun()
	feed(t, b, allocs...)
	feed(t, b, socks...)
	for i := range uint64(3) { // the raw client writes 3 messages, the server reads and frees them
		b.KernelAlloc(kalloc(200+i, 11, 0x1000+i, event.SockWrite, true), 1, kSend)
		b.KernelFree(kfree(210+i, 10, 0x1000+i))
	}
	b.KernelAlloc(kalloc(250, 11, 0x2000, event.SockRead, true), 2, kFault) // its read buffer faulted in: the process's own
	b.KernelAlloc(kalloc(260, 12, 0x3000, event.SockWrite, true), 1, kSend) // stdio client: freed after its exit
	b.KernelAlloc(kalloc(261, 12, 0x3000, event.SockWrite, true), 1, kSend) // same address again, its free unseen
	b.KernelAlloc(kalloc(262, 12, 0x4000, event.SockConnect, true), 3, kSend[:4])
	b.KernelFree(kfree(263, 77, 0x9999)) // never allocated by a traced task: ignored
	feed(t, b, exit(300, 12, 0))
	b.KernelFree(kfree(310, 10, 0x3000))
	r := b.Finish(&fakeSym{}, Meta{Roles: echoRoles, Kernel: &KernelMeta{Messages: 3, IRQ: 7}})

	if r.Kernel == nil || r.Kernel.Allocations != 7 || r.Kernel.Frees != 4 || r.Kernel.FreedByOther != 4 || r.Kernel.InterruptLeftOut != 7 {
		t.Fatalf("kernel report: %+v", r.Kernel)
	}
	site := r.KernelSites[0]
	if site.PID != 11 || site.Count != 3 || site.SocketCall != "write" || site.Entry != "syscall" || site.Syscall != 1 ||
		site.OutstandingCount != 0 || len(site.FreedBy) != 1 || site.FreedBy[0].PID != 10 || site.FreedBy[0].Count != 3 {
		t.Errorf("write site: %+v", site)
	}
	if site.Stack[0].Function != "__kmalloc_node_track_caller_noprof" || site.Stack[0].Frame != 0 {
		t.Errorf("the tracing machinery's frames were kept: %+v", site.Stack[0])
	}
	if f := r.KernelSites[1]; !f.UserFault || f.Entry != "page fault" || f.Syscall != -1 {
		t.Errorf("fault site: %+v", f)
	}
	byRole := map[Role]*SocketKernel{}
	for _, x := range r.SocketPath.Processes {
		byRole[x.Role] = x.Kernel
	}
	raw, stdio, server := byRole[RoleClientRaw], byRole[RoleClientStdio], byRole[RoleServer]
	if raw.Allocations != 3 || raw.WriteAllocations != 3 || raw.Messages != 3 || raw.PerMessage != 1 || raw.Outstanding != 0 || raw.Bytes != 3*512 {
		t.Errorf("raw client: %+v", raw)
	}
	if stdio.Allocations != 2 || stdio.Outstanding != 1 || stdio.SetupAllocations != 1 {
		t.Errorf("stdio client: %+v (one block freed after its exit, one reallocated unseen)", stdio)
	}
	if server.Messages != 6 || server.Allocations != 0 {
		t.Errorf("server: %+v", server)
	}
	sp := r.SocketPath.Kernel
	if sp.Allocations != 5 || sp.Outstanding != 1 || sp.Messages != 12 {
		t.Errorf("socket_path.kernel: %+v", sp)
	}
	want := "but the kernel made 5 allocations (2,560 B) for them, 0.42 per message written (kmalloc, on unix_*_sendmsg), 1 still held when their process exited."
	if !strings.HasSuffix(r.SocketPath.Conclusion, want) {
		t.Errorf("conclusion: %s\nwant suffix: %s", r.SocketPath.Conclusion, want)
	}
	var text strings.Builder
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"KERNEL ALLOCATIONS", "[k] vmlinux!unix_stream_sendmsg", "freed by pid 10 peer ×3", "7 in interrupt context left out"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("text lacks %q:\n%s", w, text.String())
		}
	}
}

// TestKernelOffLeavesReportAlone: without the kernel half the report has neither section.
func TestKernelOffLeavesReportAlone(t *testing.T) {
	allocs, socks := echoRun()
	r := build(t, Meta{Roles: echoRoles}, append(allocs, socks...)...)
	if r.Kernel != nil || r.KernelSites != nil || r.SocketPath.Kernel != nil || strings.Contains(r.SocketPath.Conclusion, "kernel") {
		t.Errorf("kernel half present with --kernel off: %+v %+v", r.Kernel, r.SocketPath.Kernel)
	}
}

// TestKernelFramesInViews: folded and pprof carry the kernel sites, their frames marked (_[k];
// a "[kernel] vmlinux" mapping) above a root naming the call, with the sites' weights.
func TestKernelFramesInViews(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	allocs, socks := echoRun()
	feed(t, b, allocs...)
	feed(t, b, socks...)
	w1, w2 := kalloc(200, 11, 0x1000, event.SockWrite, true), kalloc(201, 11, 0x1001, event.SockWrite, true)
	w1.Seq, w2.Seq = 1, 2
	b.KernelAlloc(w1, 1, kSend)
	b.KernelCallEnd(11, 1, sid(stMain)) // the first write's user stack; the second's end was lost
	b.KernelAlloc(w2, 1, kSend)
	b.KernelCallEnd(11, 1, sid(stHelper)) // a stale end: ignored
	b.KernelFree(kfree(210, 10, 0x1000))
	r := b.Finish(&fakeSym{}, Meta{Roles: echoRoles, Kernel: &KernelMeta{Messages: 2}})
	var folded strings.Builder
	if err := r.WriteFolded(&folded, FoldedOptions{ProcessRoot: true}); err != nil {
		t.Fatal(err)
	}
	kpart := ";[kernel:_write_on_AF_UNIX];entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];ksys_write_[k];vfs_write_[k];sock_write_iter_[k];unix_stream_sendmsg_[k];sock_alloc_send_pskb_[k];__alloc_skb_[k];kmalloc_reserve_[k];__kmalloc_node_track_caller_noprof_[k] 512"
	for _, want := range []string{"comm-11;_start;main;malloc" + kpart, "comm-11" + kpart} {
		if !strings.Contains(folded.String(), want+"\n") {
			t.Errorf("folded lacks\n%s\n:\n%s", want, folded.String())
		}
	}
	if us := r.KernelSites[0].UserStacks; len(us) != 1 || us[0].Count != 1 || us[0].Bytes != 512 || len(us[0].Stack) != 3 {
		t.Errorf("user stacks: %+v", us)
	}
	folded.Reset()
	if err := r.WriteFolded(&folded, FoldedOptions{Weight: WeightOutstandingCount}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(folded.String(), "__kmalloc_node_track_caller_noprof_[k] 1\n") {
		t.Errorf("outstanding-count folded:\n%s", folded.String())
	}
	p := r.Profile()
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	var kernelSamples int
	var sum [4]int64
	for _, s := range p.Sample {
		if len(s.Label["kernel"]) == 0 {
			continue
		}
		kernelSamples++
		for i := range sum {
			sum[i] += s.Value[i]
		}
		top := s.Location[0]
		if top.Mapping.File != "[kernel] vmlinux" || top.Line[0].Function.Name != "__kmalloc_node_track_caller_noprof" ||
			s.Label["socket_call"][0] != "write" {
			t.Errorf("kernel sample: %+v at %s in %s", s.Value, top.Line[0].Function.Name, top.Mapping.File)
		}
		names := ""
		for _, l := range s.Location {
			names += l.Line[0].Function.Name + " "
		}
		if !strings.Contains(names, "unix_stream_sendmsg sock_write_iter vfs_write ksys_write do_syscall_64 entry_SYSCALL_64_after_hwframe [kernel: write on AF_UNIX]") ||
			(s.Value[2] == 0 && !strings.HasSuffix(names, "[kernel: write on AF_UNIX] malloc main _start ")) {
			t.Errorf("kernel sample's frames: %s (values %v)", names, s.Value)
		}
	}
	if kernelSamples != 2 || sum != [4]int64{2, 1024, 1, 512} || p.Mapping[0].File == "[kernel] vmlinux" {
		t.Errorf("%d kernel samples, sums %v; first mapping %s", kernelSamples, sum, p.Mapping[0].File)
	}
}
