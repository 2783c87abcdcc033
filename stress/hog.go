package main

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// startHog keeps n threads busy spinning until the returned stop is called: a loaded machine, so
// that a check shows it does not depend on an idle one (the tracer's reader competes for CPU).
func startHog(n int) (stop func()) {
	var done atomic.Bool
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for x := 0; !done.Load(); x++ {
				if x%(1<<20) == 0 {
					runtime.Gosched() // still preemptible by the Go scheduler; the OS thread stays busy
				}
			}
		}()
	}
	return func() {
		done.Store(true)
		wg.Wait()
	}
}
