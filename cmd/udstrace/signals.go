package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// killNow is closed by a second Ctrl-C (or SIGTERM): an interrupted command's process group then gets
// SIGKILL at once instead of after --kill-after, and the report is still written.
var killNow = make(chan struct{})

// notifyTwice returns a context that ends at the first SIGINT or SIGTERM, and closes killNow at the
// second. The second also restores the default action, so a third stops udstrace itself should it be
// stuck; its helper processes then end the traced commands and clean up as after a SIGKILL.
func notifyTwice() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 3)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		for n := 1; ; n++ {
			if _, ok := <-sigs; !ok {
				return
			}
			switch n {
			case 1:
				cancel()
			case 2:
				close(killNow)
				signal.Reset(os.Interrupt, syscall.SIGTERM)
				return
			}
		}
	}()
	return ctx, func() { signal.Stop(sigs); cancel() }
}

// killAfter turns --kill-after into session.Options.KillAfter, whose zero means the default.
func killAfter(d time.Duration) time.Duration {
	if d == 0 {
		return -1 // no grace at all
	}
	return d
}
