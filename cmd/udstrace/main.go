// Command udstrace traces every allocation a process makes (libc's malloc family and mmap/brk) with eBPF.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	rtrace "runtime/trace"
	"strings"

	"github.com/udstrace/udstrace/pkg/launch"
	"github.com/udstrace/udstrace/pkg/session"
)

func main() {
	if launch.IsHelper() {
		err := launch.RunHelper()
		fmt.Fprintf(os.Stderr, "udstrace: starting command: %v\n", err)
		os.Exit(127)
	}
	ctx, stop := notifyTwice()                                   // a second Ctrl-C kills the traced command at once
	stopCPU := startCPUProfile(os.Getenv("UDSTRACE_CPUPROFILE")) // for finding where the tracer's CPU goes
	code := run(ctx, os.Args[1:])
	session.Wait() // the report is out; the probes finish detaching
	stopCPU()
	stop()
	if path := os.Getenv("UDSTRACE_MEMPROFILE"); path != "" {
		writeHeapProfile(path) // for finding where a long trace's memory goes
	}
	os.Exit(code)
}

func startCPUProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		return func() {}
	}
	if strings.HasSuffix(path, ".trace") { // an execution trace: where goroutines wait
		if err := rtrace.Start(f); err != nil {
			f.Close()
			return func() {}
		}
		return func() { rtrace.Stop(); f.Close() }
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.WriteHeapProfile(f)
}
