package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"github.com/udstrace/udstrace/bench/floor"
)

// holdArg makes the bench binary the floor rows' held child: it waits for one
// byte on fd 3, then execs its arguments. The PID stays the same across the
// exec, so the probes can be set on that PID before allocbench exists, and
// count every call from its first instruction. The bench is a Go program
// without cgo: it makes no libc allocator calls of its own before the exec.
const holdArg = "__floor-hold"

// The probes are set on the held child's main thread (the task whose TID is
// the PID). An exec from another thread would make that thread the new main
// thread under the same PID, leaving the probes on the old, dead task: so the
// held child keeps main on the main thread, from init on.
func init() {
	if len(os.Args) > 1 && os.Args[1] == holdArg {
		runtime.LockOSThread()
	}
}

func hold(argv []string) {
	if syscall.Gettid() != os.Getpid() {
		fmt.Fprintln(os.Stderr, "bench: held child not on its main thread")
		os.Exit(126)
	}
	release := os.NewFile(3, "release")
	var b [1]byte
	if n, _ := release.Read(b[:]); n != 1 {
		os.Exit(1) // the bench went away before releasing us
	}
	release.Close()
	err := syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintf(os.Stderr, "bench: exec %s: %v\n", argv[0], err)
	os.Exit(127)
}

// floorRun measures allocbench under the bench's own empty uprobes at
// udstrace's offsets: one trap per pair (malloc's entry) or three (malloc's
// entry and return, free).
func (e *env) floorRun(three bool) func(context.Context, int) (sample, error) {
	return func(ctx context.Context, pairs int) (sample, error) {
		s := newSample()
		pr, pw, err := os.Pipe()
		if err != nil {
			return s, err
		}
		defer pr.Close()
		defer pw.Close()
		var f *floor.Floor
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
		ready := func(pid int) error {
			pr.Close() // the child has its copy
			if f, err = floor.Attach(e.libc, pid, e.offsets, three); err != nil {
				return err
			}
			_, err := pw.Write([]byte{1})
			pw.Close()
			return err
		}
		argv := append([]string{e.self, holdArg, e.bench}, e.args(pairs)...)
		c, err := e.startWith(ctx, []*os.File{pr}, ready, argv...)
		if err != nil {
			return s, err
		}
		if _, err := parseBench(c.out, &s); err != nil {
			return s, err
		}
		n, err := f.Counts()
		if err != nil {
			return s, err
		}
		s.malloc = int64(n.MallocEnter)
		if three {
			s.returns, s.free = int64(n.MallocReturn), int64(n.FreeEnter)
		}
		return s, nil
	}
}
