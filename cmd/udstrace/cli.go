package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/session"
)

// Exit codes, documented in the README.
const (
	exitOK      = 0
	exitFailure = 1 // tracing failed (kernel, permissions, target)
	exitUsage   = 2 // bad command line
)

const usage = `udstrace traces every allocation a process makes: libc's malloc family
(uprobes) and mmap/munmap/mremap/brk (syscall tracepoints), with user stacks.

Usage:
  udstrace run [options] --workload echo       trace the built-in AF_UNIX echo experiment
  udstrace run [options] -- COMMAND [ARG...]    trace a command from exec to exit, children too
  udstrace attach --pid PID[,PID...] [options]  trace running processes until Ctrl-C, --duration or exit
  udstrace trace [options]                      trace every process on the machine (system-wide)
  udstrace help                                 this text

Options:
`

// options is the flat set of command-line options.
type options struct {
	workload   string
	messages   int
	size       int
	format     string
	output     string
	stack      string
	stackBytes uint
	ringBytes  uint
	follow     bool
	debug      bool
	topSites   int
	pids       string
	user       string
	duration   time.Duration
}

func newFlags(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("udstrace", flag.ContinueOnError)
	fs.StringVar(&o.workload, "workload", "", "built-in workload to run and trace: echo")
	fs.IntVar(&o.messages, "messages", 3, "echo: messages each client sends")
	fs.IntVar(&o.size, "size", 0, "echo: bytes per message (0: the classic three strings)")
	fs.StringVar(&o.format, "format", "text", "report format: text or json")
	fs.StringVar(&o.output, "o", "", "write the report to `FILE` instead of stdout")
	fs.StringVar(&o.stack, "stack", "auto", "user stacks: fp (frame pointers, cheapest), cfi (copy + .eh_frame unwinding) or auto")
	fs.UintVar(&o.stackBytes, "stack-bytes", 8192, "bytes of user stack copied per event for CFI unwinding (power of two, 512..16384)")
	fs.UintVar(&o.ringBytes, "ring-size", 16<<20, "ring buffer bytes (power of two)")
	fs.BoolVar(&o.follow, "follow", true, "trace children of traced processes")
	fs.BoolVar(&o.debug, "debug", false, "verbose logs and the BPF verifier log on load errors")
	fs.IntVar(&o.topSites, "top", 20, "text: call sites to print")
	fs.StringVar(&o.user, "user", "nobody", "echo: run the workload as this unprivileged `USER`")
	fs.StringVar(&o.pids, "pid", "", "attach: `PID[,PID...]` of running processes to trace")
	fs.DurationVar(&o.duration, "duration", 0, "attach, trace: stop after this long (e.g. 30s; 0: until Ctrl-C)")
	return fs
}

func run(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(os.Stdout)
		return exitOK
	}
	var o options
	fs := newFlags(&o)
	fs.SetOutput(io.Discard)
	sub := args[0]
	if sub != "run" && sub != "attach" && sub != "trace" {
		fmt.Fprintf(os.Stderr, "udstrace: unknown command %q: use run, attach or trace (see udstrace help)\n", sub)
		return exitUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %v (see udstrace help)\n", err)
		return exitUsage
	}
	if msg := o.validate(sub, fs.Args()); msg != "" {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", msg)
		return exitUsage
	}
	level := slog.LevelWarn
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if os.Geteuid() != 0 && !hasBPFCaps() {
		fmt.Fprintln(os.Stderr, "udstrace: needs root (or CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN): run it with sudo")
		return exitFailure
	}
	out, commit, err := openOutput(o.output)
	if err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		return exitFailure
	}
	sopts := session.Options{
		Command: fs.Args(), Workload: o.workload, Messages: o.messages, Size: o.size, User: o.user,
		Stack: o.stack, StackBytes: uint32(o.stackBytes), RingBytes: uint32(o.ringBytes),
		Follow: o.follow, Debug: o.debug, Stdout: os.Stderr, Stderr: os.Stderr, Log: log,
	}
	if o.workload != "" && !o.debug {
		sopts.Stdout = io.Discard // the echo lines say nothing the report does not; --debug shows them
	}
	var rep *report.Report
	switch sub {
	case "run":
		rep, err = session.Run(ctx, sopts)
	case "attach":
		pids, _ := parsePIDs(o.pids)
		rep, err = session.Attach(ctx, pids, o.duration, sopts)
	case "trace":
		rep, err = session.Trace(ctx, o.duration, sopts)
	}
	if err != nil {
		commit(false)
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		return exitFailure
	}
	if err := write(out, rep, o); err != nil {
		commit(false)
		fmt.Fprintf(os.Stderr, "udstrace: writing report: %v\n", err)
		return exitFailure
	}
	if err := commit(true); err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		return exitFailure
	}
	return exitOK
}

func (o *options) validate(sub string, rest []string) string {
	if sub == "attach" {
		if _, err := parsePIDs(o.pids); err != nil {
			return err.Error()
		}
	}
	if sub != "run" && (o.workload != "" || len(rest) > 0) {
		return sub + " takes no command or workload: use udstrace run for that"
	}
	switch {
	case o.format != "text" && o.format != "json":
		return fmt.Sprintf("unknown format %q: use --format text or --format json", o.format)
	case sub == "run" && o.workload == "" && len(rest) == 0:
		return "nothing to trace: give --workload echo or -- COMMAND [ARG...]"
	case o.workload != "" && len(rest) > 0:
		return "give either --workload or a command, not both"
	case o.stack != "fp" && o.stack != "cfi" && o.stack != "auto":
		return fmt.Sprintf("unknown stack mode %q: use --stack fp, cfi or auto", o.stack)
	case o.messages < 1:
		return "--messages must be at least 1"
	}
	return ""
}

// parsePIDs reads --pid's comma-separated list.
func parsePIDs(s string) ([]int, error) {
	if s == "" {
		return nil, errors.New("attach needs --pid PID[,PID...]")
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--pid: %q is not a process ID", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func write(w io.Writer, rep *report.Report, o options) error {
	if o.format == "json" {
		return rep.WriteJSON(w)
	}
	return rep.WriteText(w)
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, usage)
	var o options
	fs := newFlags(&o)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintln(w, "\nExit status: 0 traced and reported, 1 tracing failed, 2 bad command line.")
}

// explain turns an error into the one line a user needs: what is wrong and what to do.
func explain(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, session.ErrUnknownWorkload):
		return msg + ": the only workload is echo (--workload echo)"
	case errors.Is(err, session.ErrCommandNotFound):
		return msg + ": check the name and PATH"
	case errors.Is(err, os.ErrPermission) || strings.Contains(msg, "operation not permitted"):
		return msg + ": needs root (CAP_BPF+CAP_PERFMON): run it with sudo"
	}
	return translateKernel(err, msg)
}
