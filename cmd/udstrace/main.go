// Command udstrace traces every allocation a process makes (libc's malloc family and mmap/brk) with eBPF.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/udstrace/udstrace/pkg/launch"
)

func main() {
	if launch.IsHelper() {
		err := launch.RunHelper()
		fmt.Fprintf(os.Stderr, "udstrace: starting command: %v\n", err)
		os.Exit(127)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
