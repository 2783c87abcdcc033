package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
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

func run(ctx context.Context, args []string) int {
	var o options
	var inv invocation
	root := newRoot(&o, &inv)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", usageLine(err))
		if errors.Is(err, errDocs) || errors.As(err, new(viewFailure)) {
			return exitFailure
		}
		return exitUsage
	}
	sub, rest := inv.sub, inv.rest
	if sub == "" {
		return exitOK // help, version, completion or docs: served
	}
	if sub == "attach" && len(rest) > 0 { // attach PID... : the arguments join --pid's list
		o.pids = strings.Join(append(slices.DeleteFunc([]string{o.pids}, func(s string) bool { return s == "" }), rest...), ",")
		rest = nil
	}
	if sub == "top" && o.interval <= 0 {
		o.interval = defaultTopInterval
	}
	if o.daemon() && o.interval <= 0 {
		o.interval = defaultServeInterval
	}
	msg := o.validate(sub, rest)
	if msg == "" {
		msg = o.inapplicable(sub, inv.set)
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
	o.kernelSet = inv.set("kernel")
	sopts := o.sessionOptions(rest)
	stream := newStreamer(out, o, sub)
	if stream != nil {
		sopts.Interval, sopts.OnInterval = o.interval, stream.snapshot
	}
	if o.daemon() {
		stop, err := startServe(o, &sopts)
		if err != nil {
			commit(false)
			fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
			return exitFailure
		}
		defer stop()
	}
	rep, err := trace(ctx, sub, o, sopts)
	if err == nil && o.fileMaps {
		rep.IncludeFileMaps()
	}
	if err == nil {
		if stream != nil {
			err = stream.final(rep)
		} else {
			err = write(out, rep, o)
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
		return verify(ctx, o, rest, rep)
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
		Command: command, Workload: o.workload, Messages: o.messages, Size: o.size, User: o.user, EchoLibc: o.echoLibc,
		Stack: o.stack, StackBytes: uint32(o.stackBytes), RingBytes: uint32(o.ringBytes), TableSize: uint32(o.tableSize), UnwindRows: uint32(o.unwindRows), CacheDir: o.cache(), DetachLater: true,
		Follow: o.follow, Debug: o.debug, Mode: o.mode, MinAge: o.minAge, MinSize: o.minSize,
		Allocator: o.allocator, AllocatorPrefix: o.allocatorPrefix,
		Comm: o.comm, Cgroup: o.cgroup, TopSites: o.topSites, MaxProcs: o.maxProcs, MaxSites: o.maxSites, SampleBytes: o.sample,
		Stdout: os.Stderr, Stderr: os.Stderr, KillAfter: killAfter(o.killAfter), KillNow: killNow,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	if o.kernelSet {
		sopts.Kernel = session.KernelOff
		if o.kernel {
			sopts.Kernel = session.KernelOn
		}
	}
	sopts.Debuginfod, _ = o.debuginfod()                    // validated
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

func write(w io.Writer, rep *report.Report, o options) error {
	switch o.format {
	case "json":
		return rep.WriteJSON(w)
	case "pprof":
		return rep.WritePprof(w)
	case "html":
		return rep.WriteHTML(w)
	case "folded":
		return rep.WriteFolded(w, report.FoldedOptions{Weight: report.Weight(o.weight), ProcessRoot: o.foldedRoot == "process"})
	}
	return rep.WriteText(w)
}

// explain turns an error into the one line a user needs: what is wrong and what to do.
func explain(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, session.ErrNoMuslEcho):
		return msg + ": install musl-tools (apt-get install musl-tools) and rebuild udstrace (make)"
	case errors.Is(err, session.ErrUnknownWorkload):
		return msg + ": the only workload is echo (--workload echo)"
	case errors.Is(err, session.ErrCommandNotFound):
		return msg + ": check the name and PATH"
	case os.Geteuid() != 0 && (errors.Is(err, os.ErrPermission) || strings.Contains(msg, "operation not permitted")):
		return msg + ": needs root (or the capabilities in udstrace help): run it with sudo"
	}
	return translateKernel(err, msg)
}

// usageLine words a command-line error cobra returned as one line.
func usageLine(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "unknown command "); ok {
		name, _, _ = strings.Cut(name, " for ")
		return "unknown command " + name + ": use run, attach, trace, top, view or version (see udstrace --help)"
	}
	return msg
}
