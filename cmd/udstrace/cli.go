package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/session"
)

// Exit codes, documented in the README.
// run -- COMMAND otherwise exits with the command's own status (128+N when a signal N killed it),
// as strace, valgrind, heaptrack and timeout(1) do; udstrace's own failures take the codes
// timeout(1) and env(1) use for theirs, out of the way of a command's usual statuses.
const (
	exitOK       = 0
	exitMismatch = 1   // --verify found a mismatch
	exitUsage    = 2   // bad command line: nothing ran
	exitFailure  = 125 // udstrace failed: kernel, permissions, target, writing the report
	exitNotFound = 127 // run: the command was not found
)

const usage = `udstrace traces every allocation a process makes: libc's malloc family
(uprobes) and mmap/munmap/mremap/brk (syscall tracepoints), with user stacks.

Usage:
  udstrace run [options] --workload echo       trace the built-in AF_UNIX echo experiment
  udstrace run [options] -- COMMAND [ARG...]    trace a command from exec to exit, children too
  udstrace attach --pid PID[,PID...] [options]  trace running processes until Ctrl-C, --duration or exit
  udstrace trace [options]                      trace every process on the machine (system-wide)
  udstrace top [options]                        live view of the busiest call sites, system-wide
  udstrace version (--version, -V)              version, commit, Go and cilium/ebpf versions, kernel features found
  udstrace help                                 this text

Options:
`

func run(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(os.Stdout)
		return exitOK
	}
	if args[0] == "version" || args[0] == "--version" || args[0] == "-V" {
		printVersion(os.Stdout)
		return exitOK
	}
	var o options
	fs := newFlags(&o)
	fs.SetOutput(io.Discard)
	sub := args[0]
	switch sub {
	case "run", "attach", "trace", "top":
	default:
		fmt.Fprintf(os.Stderr, "udstrace: unknown command %q: use run, attach, trace or top (see udstrace help)\n", sub)
		return exitUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %v%s (see udstrace help)\n", err, parseHint(err))
		return exitUsage
	}
	if sub == "top" && o.interval <= 0 {
		o.interval = defaultTopInterval
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	msg := o.validate(sub, fs.Args())
	if msg == "" {
		msg = o.inapplicable(sub, func(name string) bool { return set[name] })
	}
	if msg != "" {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", msg)
		return exitUsage
	}
	if msg := capsProblem(sub, o); msg != "" {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", msg)
		return exitFailure
	}
	out, commit, err := openOutput(o.output)
	if err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		if errors.Is(err, errOutput) {
			return exitUsage
		}
		return exitFailure
	}
	sopts := o.sessionOptions(fs.Args())
	stream := newStreamer(out, o, sub)
	if stream != nil {
		sopts.Interval, sopts.OnInterval = o.interval, stream.snapshot
	}
	rep, err := trace(ctx, sub, o, sopts)
	if err == nil {
		if stream != nil {
			err = stream.final(rep)
		} else {
			err = write(out, rep, o.format)
		}
		if err != nil {
			err = fmt.Errorf("writing report: %w", err)
		}
	}
	if err != nil {
		commit(false)
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		if errors.Is(err, session.ErrCommandNotFound) {
			return exitNotFound
		}
		return exitFailure
	}
	if err := commit(true); err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		return exitFailure
	}
	if o.verify {
		return verify(ctx, o, fs.Args(), rep)
	}
	if rep.CommandStatus != nil {
		return *rep.CommandStatus
	}
	return exitOK
}

func (o *options) sessionOptions(command []string) session.Options {
	level := slog.LevelWarn
	if o.debug {
		level = slog.LevelDebug
	}
	sopts := session.Options{
		Command: command, Workload: o.workload, Messages: o.messages, Size: o.size, User: o.user,
		Stack: o.stack, StackBytes: uint32(o.stackBytes), RingBytes: uint32(o.ringBytes), TableSize: uint32(o.tableSize), UnwindRows: uint32(o.unwindRows), CacheDir: o.cache(), DetachLater: true,
		Follow: o.follow, Debug: o.debug, Mode: o.mode, MinAge: o.minAge, MinSize: o.minSize,
		Comm: o.comm, Cgroup: o.cgroup, TopSites: o.topSites, MaxProcs: o.maxProcs, MaxSites: o.maxSites, SampleBytes: o.sample,
		Stdout: os.Stderr, Stderr: os.Stderr, KillAfter: killAfter(o.killAfter), KillNow: killNow,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	sopts.OnTracing = func() { sopts.Log.Debug("tracing") } // tests time --duration from here
	if o.verify {
		sopts.Env = session.VerifyEnv() // the same variables as the interposer's run
		sopts.NoASLR = true             // and the same addresses: some programs hash pointers
		sopts.MaxSites = 0              // differences are explained by each site's stack: none folded
	}
	if o.workload != "" && !o.debug {
		sopts.Stdout = io.Discard // the echo lines say nothing the report does not; --debug shows them
	}
	return sopts
}

// trace runs the subcommand's trace to its end.
func trace(ctx context.Context, sub string, o options, sopts session.Options) (*report.Report, error) {
	switch sub {
	case "run":
		return session.Run(ctx, sopts)
	case "attach":
		pids, _ := parsePIDs(o.pids)
		return session.Attach(ctx, pids, o.duration, sopts)
	}
	if o.pids != "" {
		pids, _ := parsePIDs(o.pids)
		return session.Attach(ctx, pids, o.duration, sopts)
	}
	return session.Trace(ctx, o.duration, sopts)
}

func write(w io.Writer, rep *report.Report, format string) error {
	switch format {
	case "json":
		return rep.WriteJSON(w)
	case "pprof":
		return rep.WritePprof(w)
	case "folded":
		return rep.WriteFolded(w)
	}
	return rep.WriteText(w)
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, usage)
	var o options
	fs := newFlags(&o)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintln(w, "\nWithout root: CAP_BPF+CAP_PERFMON; attach, trace and top also CAP_SYS_PTRACE; --workload echo also CAP_SETUID+CAP_SETGID.")
	fmt.Fprintln(w, "Exit status: run -- COMMAND: the command's own (128+N if signal N killed it); otherwise 0 traced and reported.")
	fmt.Fprintln(w, "  1 --verify found a mismatch, 2 bad command line, 125 udstrace failed, 127 command not found.")
}

// explain turns an error into the one line a user needs: what is wrong and what to do.
func explain(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, session.ErrUnknownWorkload):
		return msg + ": the only workload is echo (--workload echo)"
	case errors.Is(err, session.ErrCommandNotFound):
		return msg + ": check the name and PATH"
	case os.Geteuid() != 0 && (errors.Is(err, os.ErrPermission) || strings.Contains(msg, "operation not permitted")):
		return msg + ": needs root (or the capabilities in udstrace help): run it with sudo"
	}
	return translateKernel(err, msg)
}

// parseHint adds a numeric flag's range to the flag package's "invalid value" error.
func parseHint(err error) string {
	_, name, ok := strings.Cut(err.Error(), " for flag -")
	if name, _, _ = strings.Cut(name, ":"); ok && flagRanges[name] != "" {
		return ": use " + flagRanges[name]
	}
	return ""
}
