package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/udstrace/udstrace/pkg/report"
)

// Ranges of the numeric flags, said in every message about them (and on parse errors).
const (
	minStackBytes, maxStackBytes = 512, 16384
	minRing, maxRing             = 4096, 1 << 30 // the BPF ring buffer: a power of two of pages
	minRows, maxRows             = 1 << 16, 1 << 27
	minTable, maxTable           = 1024, 1 << 24
	maxMessages                  = 1 << 20
	maxSize                      = 1 << 20 // echo: bytes per message
	maxTopSites                  = 100000
	maxProcsBound                = 1 << 20
	maxSitesBound                = 1 << 24
	maxPID                       = 1 << 22 // the kernel's PID_MAX_LIMIT
	minInterval                  = 100 * time.Millisecond
	maxComm                      = 15 // the kernel's TASK_COMM_LEN less the NUL
)

// flagRanges says each numeric flag's valid values, for messages.
var flagRanges = map[string]string{
	"messages":     fmt.Sprintf("1 to %d", maxMessages),
	"size":         fmt.Sprintf("0 to %d bytes", maxSize),
	"stack-bytes":  fmt.Sprintf("a power of two from %d to %d", minStackBytes, maxStackBytes),
	"ring-size":    fmt.Sprintf("a power of two from %d to %d bytes", minRing, maxRing),
	"unwind-rows":  fmt.Sprintf("%d to %d rows", minRows, maxRows),
	"table-size":   fmt.Sprintf("%d to %d entries", minTable, maxTable),
	"top":          fmt.Sprintf("1 to %d sites", maxTopSites),
	"max-procs":    fmt.Sprintf("0 (no bound) to %d", maxProcsBound),
	"max-sites":    fmt.Sprintf("0 (no bound) to %d", maxSitesBound),
	"kill-after":   "0 (SIGKILL at once) or more, e.g. 5s",
	"sample-bytes": "0 (every call) or more bytes",
	"min-size":     "0 or more bytes",
	"duration":     "0 (until Ctrl-C or exit) or more, e.g. 30s",
	"interval":     fmt.Sprintf("at least %v, e.g. 1s", minInterval),
	"min-age":      "0 or more, e.g. 10s",
	"pid":          fmt.Sprintf("process IDs from 1 to %d, comma-separated", maxPID),
}

func pow2(n uint) bool { return n&(n-1) == 0 }

// validate checks every option, once, before anything runs: the one place a value is refused.
// It returns the line to print (exit status 2), "" when all is well.
func (o *options) validate(sub string, rest []string) string {
	bad := func(flag string, v any) string {
		return fmt.Sprintf("--%s %v: use %s", flag, v, flagRanges[flag])
	}
	if sub == "attach" || (sub != "run" && o.pids != "") {
		if _, err := parsePIDs(o.pids); err != nil {
			return err.Error()
		}
	}
	if _, err := o.debuginfod(); err != nil {
		return err.Error()
	}
	if sub != "run" && (o.workload != "" || len(rest) > 0) {
		return sub + " takes no command or workload: use udstrace run for that"
	}
	ok := false
	for _, f := range formats {
		ok = ok || f == o.format
	}
	switch {
	case !ok:
		return fmt.Sprintf("unknown format %q: use --format %s", o.format, strings.Join(formats, ", "))
	case sub == "run" && o.workload == "" && len(rest) == 0:
		return "nothing to trace: give --workload echo or -- COMMAND [ARG...]"
	case o.workload != "" && len(rest) > 0:
		return "give either --workload or a command, not both"
	case o.workload != "" && o.workload != "echo":
		return fmt.Sprintf("--workload %q: the only workload is echo (--workload echo)", o.workload)
	case o.stack != "fp" && o.stack != "cfi" && o.stack != "auto" && o.stack != "table":
		return fmt.Sprintf("unknown stack mode %q: use --stack auto, table, cfi or fp", o.stack)
	case o.mode != "full" && o.mode != "count":
		return fmt.Sprintf("unknown mode %q: use --mode full or --mode count", o.mode)
	case o.mode == "count" && o.stack == "cfi":
		return "--mode count aggregates stacks in the kernel, which copied stacks cannot be: use --stack auto or fp"
	case o.messages < 1 || o.messages > maxMessages:
		return bad("messages", o.messages)
	case o.size < 0 || o.size > maxSize:
		return bad("size", o.size)
	case o.echoLibc != "glibc" && o.echoLibc != "musl":
		return fmt.Sprintf("--echo-libc %q: use --echo-libc glibc or musl", o.echoLibc)
	case o.user == "":
		return "--user \"\": name the user to run the workload as (default nobody)"
	case o.stackBytes < minStackBytes || o.stackBytes > maxStackBytes || !pow2(o.stackBytes):
		return bad("stack-bytes", o.stackBytes)
	case o.ringBytes < minRing || o.ringBytes > maxRing || !pow2(o.ringBytes):
		return bad("ring-size", o.ringBytes)
	case o.unwindRows < minRows || o.unwindRows > maxRows:
		return bad("unwind-rows", o.unwindRows)
	case o.tableSize < minTable || o.tableSize > maxTable:
		return bad("table-size", o.tableSize)
	case o.topSites < 1 || o.topSites > maxTopSites:
		return bad("top", o.topSites)
	case o.maxProcs < 0 || o.maxProcs > maxProcsBound:
		return bad("max-procs", o.maxProcs)
	case o.maxSites < 0 || o.maxSites > maxSitesBound:
		return bad("max-sites", o.maxSites)
	case o.killAfter < 0:
		return bad("kill-after", o.killAfter)
	case o.duration < 0:
		return bad("duration", o.duration)
	case o.minAge < 0:
		return bad("min-age", o.minAge)
	case o.interval != 0 && o.interval < minInterval:
		return bad("interval", o.interval)
	case len(o.comm) > maxComm:
		return fmt.Sprintf("--comm %q: use a process name of at most %d bytes (the kernel's comm)", o.comm, maxComm)
	case !slices.Contains(report.Weights, report.Weight(o.weight)):
		return fmt.Sprintf("unknown weight %q: use --weight %s", o.weight, strings.Join(weightNames(), ", "))
	case report.Weight(o.weight).Outstanding() && o.mode == "count":
		return fmt.Sprintf("--weight %s: count mode traces no frees, so nothing is outstanding: use --mode full, or --weight bytes or count", o.weight)
	case topSorts[o.sort] == "":
		return fmt.Sprintf("unknown sort key %q: use --sort bytes, count, outstanding or growth", o.sort)
	case (o.sort == "outstanding" || o.sort == "growth") && o.mode == "count":
		return fmt.Sprintf("--sort %s: count mode traces no frees, so nothing is outstanding: use --mode full, or --sort bytes or count", o.sort)
	case o.foldedRoot != "" && o.foldedRoot != "process":
		return fmt.Sprintf("--folded-root %q: the only root is process (--folded-root process)", o.foldedRoot)
	case o.serve != "" && serveAddrProblem(o.serve) != "":
		return serveAddrProblem(o.serve)
	case o.otlp != "" && otlpProblem(o.otlp) != "":
		return otlpProblem(o.otlp)
	case o.format == "ndjson" && o.interval <= 0:
		return "--format ndjson needs --interval (e.g. --interval 1s)"
	case o.allocatorPrefix != "" && o.allocator == "":
		return "--allocator-prefix is the prefix of the functions of --allocator FILE: give --allocator too"
	case o.verify && o.sample > 0:
		return "--verify compares exact counts per call site: drop --sample-bytes"
	case o.verify && (sub != "run" || o.mode != "full" || o.workload != ""):
		return "--verify works with udstrace run -- COMMAND in full mode"
	case o.stack != "fp" && o.ringBytes < 16*o.stackBytes:
		// Stacks are copied while unwind tables load (and always with cfi); copies may fill only
		// half the ring.
		return fmt.Sprintf("--ring-size %d holds too few %d-byte stack copies: use at least %d, or a smaller --stack-bytes", o.ringBytes, o.stackBytes, 16*o.stackBytes)
	}
	return ""
}

// appliesTo says which subcommands each flag means something for; a flag given where it means
// nothing is refused rather than silently ignored (run --duration 1s would otherwise run on).
var appliesTo = []struct {
	flag  string
	subs  []string
	echo  bool   // only with --workload echo
	where string // how the message says where it applies
}{
	{"workload", []string{"run"}, false, "run"},
	{"verify", []string{"run"}, false, "run -- COMMAND"},
	{"allocator", []string{"run", "attach"}, false, "run and attach"},
	{"allocator-prefix", []string{"run", "attach"}, false, "run and attach, with --allocator"},
	{"kill-after", []string{"run"}, false, "run"},
	{"messages", []string{"run"}, true, "run --workload echo"},
	{"size", []string{"run"}, true, "run --workload echo"},
	{"user", []string{"run"}, true, "run --workload echo"},
	{"echo-libc", []string{"run"}, true, "run --workload echo"},
	{"pid", []string{"attach", "trace", "top"}, false, "attach, trace and top"},
	{"duration", []string{"attach", "trace", "top"}, false, "attach, trace and top (run ends when its command does)"},
	{"sort", []string{"top"}, false, "top"},
	{"serve", []string{"attach", "trace"}, false, "attach and trace"},
	{"otlp-endpoint", []string{"attach", "trace"}, false, "attach and trace"},
	{"format", []string{"run", "attach", "trace"}, false, "run, attach and trace (top draws its own view)"},
	{"output", []string{"run", "attach", "trace"}, false, "run, attach and trace (top draws on the terminal)"},
	{"weight", []string{"run", "attach", "trace"}, false, "run, attach and trace with --format folded"},
	{"folded-root", []string{"run", "attach", "trace"}, false, "run, attach and trace with --format folded"},
}

// applies reports whether flag means something for sub (help hides the others).
func applies(flag, sub string) bool {
	for _, a := range appliesTo {
		if a.flag == flag {
			return slices.Contains(a.subs, sub)
		}
	}
	return true
}

// inapplicable returns the line refusing a flag given where it means nothing, "" when every
// given flag applies. set says whether a flag was given on the command line.
func (o *options) inapplicable(sub string, set func(name string) bool) string {
	for _, a := range appliesTo {
		if set(a.flag) && (!slices.Contains(a.subs, sub) || (a.echo && o.workload == "")) {
			return fmt.Sprintf("--%s applies only to %s: drop it", a.flag, a.where)
		}
	}
	for _, f := range []string{"weight", "folded-root"} {
		if set(f) && o.format != "folded" {
			return fmt.Sprintf("--%s applies only to --format folded: drop it, or add --format folded", f)
		}
	}
	if set("interval") && sub != "top" && o.format != "ndjson" && !o.daemon() {
		return "--interval applies only to --format ndjson, --serve, --otlp-endpoint and top: drop it, or add --format ndjson"
	}
	return ""
}
