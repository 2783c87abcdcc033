package report

import (
	"fmt"
	"hash/fnv"
	"sync"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

const (
	libcPath = "/usr/lib/x86_64-linux-gnu/libc.so.6"
	exePath  = "/usr/bin/echo-client"
)

func fr(module string, off uint64) event.Frame {
	base := uint64(0x7f0000000000)
	if module == exePath {
		base = 0x555555554000
	}
	return event.Frame{Addr: base + off, Module: module, FileOffset: off, ModuleKey: "8:1:" + module, Return: true}
}

// Synthetic frames; fakeSym names them.
var (
	fMalloc     = fr(libcPath, 0x100)
	fMmap       = fr(libcPath, 0x110)
	fBrk        = fr(libcPath, 0x120)
	fFdopen     = fr(libcPath, 0x200)
	fDoalloc    = fr(libcPath, 0x300)
	fDoallocbuf = fr(libcPath, 0x310)
	fUnderflow  = fr(libcPath, 0x320)
	fFgetc      = fr(libcPath, 0x400)
	fFputs      = fr(libcPath, 0x410)
	fRead       = fr(libcPath, 0x500)
	fMain       = fr(exePath, 0x1000)
	fHelper     = fr(exePath, 0x1100)
	fStart      = fr(exePath, 0x1200)
	fAnon       = event.Frame{Addr: 0xdead0000}
)

var fakeNames = map[uint64]string{
	0x100: "malloc", 0x110: "mmap64", 0x120: "__brk", 0x200: "_IO_new_fdopen", 0x300: "_IO_file_doallocate",
	0x310: "_IO_doallocbuf", 0x320: "_IO_new_file_underflow", 0x400: "fgetc", 0x410: "fputs",
	0x500: "__libc_read", 0x1000: "main", 0x1100: "helper", 0x1200: "_start",
}

// fakeSym symbolizes the frames above and counts its calls.
type fakeSym struct{ calls int }

func (s *fakeSym) Symbolize(f event.Frame) []SymFrame {
	s.calls++
	name, ok := fakeNames[f.FileOffset]
	if !ok || f.Module == "" {
		return nil
	}
	out := []SymFrame{{Function: name, Offset: 0x10, File: "x.c", Line: int(f.FileOffset)}}
	if name == "_IO_doallocbuf" { // pretend something was inlined into it
		out = append([]SymFrame{{Function: "inlined_helper", File: "y.h", Line: 3, Inlined: true}}, out...)
	}
	return out
}

func stk(f ...event.Frame) []event.Frame { return f }

// The tests' stack registry: frames interned by content, as the kernel's stack ids are.
var (
	stacksMu   sync.Mutex
	testStacks = map[uint64][]event.Frame{}
)

// sid interns a stack and returns its id (0 for none).
func sid(st []event.Frame) uint64 {
	if len(st) == 0 {
		return 0
	}
	h := fnv.New64a()
	for _, f := range st { // like pkg/kstack: a frame in a file is its module and offset, else its address
		if f.Module != "" {
			fmt.Fprintf(h, "%s|%x;", frameModKey(&f), f.FileOffset)
		} else {
			fmt.Fprintf(h, "|%x;", f.Addr)
		}
	}
	id := h.Sum64() | 1
	stacksMu.Lock()
	testStacks[id] = st
	stacksMu.Unlock()
	return id
}

func lookupStack(id uint64) []event.Frame {
	stacksMu.Lock()
	defer stacksMu.Unlock()
	return testStacks[id]
}

// testOpts gives a builder the tests' stack registry.
func testOpts(o Options) Options {
	o.Stacks = lookupStack
	return o
}

var (
	stMain    = stk(fMalloc, fMain, fStart)
	stHelper  = stk(fMalloc, fHelper, fMain, fStart)
	stFdopen  = stk(fMalloc, fFdopen, fMain, fStart)
	stFgetc   = stk(fMalloc, fDoalloc, fDoallocbuf, fUnderflow, fFgetc, fMain, fStart)
	stFputs   = stk(fMalloc, fDoalloc, fDoallocbuf, fFputs, fMain, fStart)
	stRead    = stk(fMalloc, fRead, fMain, fStart)
	stReadAt0 = stk(fRead, fMain, fStart) // the allocator's own frame misnamed: must not count
	stMmap    = stk(fMmap, fMain, fStart)
	stBrk     = stk(fBrk, fMain, fStart)
)

// ev builders keep the tables short.
func al(t uint64, pid uint32, k event.Kind, size, addr uint64, st []event.Frame) *event.Alloc {
	a := &event.Alloc{Time: t, PID: pid, TID: pid, Comm: "comm", Kind: k, Size: size, Addr: addr, StackID: sid(st)}
	if k == event.Mmap {
		a.FD, a.Flags = -1, 0x22 // MAP_PRIVATE|MAP_ANONYMOUS, as most mmaps are
	}
	return a
}

// fileMap makes an mmap event one of a file (fd 3, MAP_PRIVATE).
func fileMap(a *event.Alloc) *event.Alloc { a.FD, a.Flags = 3, 0x02; return a }

func re(t uint64, pid uint32, k event.Kind, old, size, addr uint64, failed bool) *event.Alloc {
	a := al(t, pid, k, size, addr, stHelper)
	a.OldAddr, a.Failed = old, failed
	return a
}

func failed(a *event.Alloc) *event.Alloc { a.Failed = true; return a }

func inside(a *event.Alloc, k event.Kind) *event.Alloc { a.Inside = k; return a }

func shrink(a *event.Alloc) *event.Alloc { a.Shrink = true; return a }

func fork(t uint64, parent, child uint32) *event.Proc {
	return &event.Proc{Time: t, Kind: event.ProcFork, PID: child, PPID: parent, Comm: "child"}
}

func exit(t uint64, pid uint32, code int) *event.Proc {
	return &event.Proc{Time: t, Kind: event.ProcExit, PID: pid, ExitCode: code}
}

func execp(t uint64, pid uint32, exe string) *event.Proc {
	return &event.Proc{Time: t, Kind: event.ProcExec, PID: pid, Comm: "new", Exe: exe}
}

// sock gives pid n socket calls (reads), the first at time first.
func sock(pid uint32, first, n uint64) event.SocketStats {
	s := event.SocketStats{PID: pid, FirstTime: first}
	if n > 0 {
		s.Counts[event.SockSocket] = 1
		s.Counts[event.SockRead] = n - 1
	}
	return s
}

// feed plays events (*event.Alloc, *event.Proc, event.SocketStats) into b.
func feed(t testing.TB, b *Builder, evs ...any) {
	t.Helper()
	for _, e := range evs {
		switch e := e.(type) {
		case *event.Alloc:
			b.Alloc(e)
		case *event.Proc:
			b.Proc(e)
		case event.SocketStats:
			b.Sockets(e)
		default:
			t.Fatalf("feed: unexpected %T", e)
		}
	}
}

func build(t testing.TB, meta Meta, evs ...any) *Report {
	t.Helper()
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, evs...)
	return b.Finish(&fakeSym{}, meta)
}

// procOf returns the last process entry of pid.
func procOf(t testing.TB, r *Report, pid uint32) Process {
	t.Helper()
	var out *Process
	for i := range r.Processes {
		if r.Processes[i].PID == pid {
			out = &r.Processes[i]
		}
	}
	if out == nil {
		t.Fatalf("no process %d in report", pid)
	}
	return *out
}
