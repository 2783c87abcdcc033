package report

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// maxTextFrames bounds the frames printed per site; JSON has them all.
const maxTextFrames = 12

// WriteText writes the report for a person; where the socket-path verdict applies, the last line is
// its quotable conclusion.
func (r *Report) WriteText(w io.Writer) error {
	var buf bytes.Buffer
	r.header(&buf)
	r.processes(&buf)
	r.sites(&buf)
	r.longLived(&buf)
	r.unmatchedFrees(&buf)
	r.fileMaps(&buf)
	r.kernelText(&buf)
	if r.SocketPath.Applies {
		r.socketPath(&buf)
		buf.WriteString("\n" + esc(r.SocketPath.Conclusion) + "\n")
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func (r *Report) header(b *bytes.Buffer) {
	cmd := make([]string, len(r.Command))
	for i, a := range r.Command {
		cmd[i] = esc(a)
	}
	tw := tabwriter.NewWriter(b, 0, 0, 1, ' ', 0)
	fmt.Fprintln(b, "udstrace report")
	if r.LostEvents > 0 { // first, before any figure it makes unreliable
		fmt.Fprintf(b, "*** %s LOST: outstanding blocks and unmatched frees below are unreliable (see the warnings) ***\n", strings.ToUpper(plural(r.LostEvents, "event")))
	}
	fmt.Fprintf(tw, "command:\t%s\n", strings.Join(cmd, " "))
	if r.Mode != "" {
		mode := esc(r.Mode)
		if r.SampleBytes > 0 {
			mode += fmt.Sprintf(" (stacks sampled every %s on average)", bytesText(r.SampleBytes))
		}
		fmt.Fprintf(tw, "mode:\t%s\n", mode)
	}
	fmt.Fprintf(tw, "stack mode:\t%s\n", cmpOr(esc(r.StackMode), "-"))
	fmt.Fprintf(tw, "duration:\t%.3fs\n", r.DurationSeconds)
	lost := commas(r.LostEvents)
	if d := r.LostDetail; r.LostEvents != 0 || d.StackTruncated != 0 {
		lost += fmt.Sprintf(" (ring buffer %s, other %s; %s stacks truncated)", commas(d.RingBuffer), commas(d.Other), commas(d.StackTruncated))
	}
	if d := r.LostDetail; d.UntracedProcesses > 0 {
		lost += fmt.Sprintf("; %s not traced (%s of them)", plural(d.UntracedProcesses, "process"), plural(d.UntracedCalls, "allocator call"))
	}
	fmt.Fprintf(tw, "lost events:\t%s\n", lost)
	if st := r.Stacks; st.Fallback > 0 || st.Truncated > 0 {
		fmt.Fprintf(tw, "stacks:\t%s; %s finished from a stack copy while unwind tables loaded, %s cut short\n",
			plural(st.Events, "event"), commas(st.Fallback), commas(st.Truncated))
	}
	for _, wn := range r.Warnings {
		fmt.Fprintf(tw, "warning:\t%s\n", esc(wn))
	}
	tw.Flush()
}

func (r *Report) processes(b *bytes.Buffer) {
	fmt.Fprintf(b, "\nPROCESSES\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tROLE\tEXIT\tALLOCS\tBYTES\tFREES\tOUTSTANDING\tMMAP\tBRK\tFILES MAPPED\tSOCKCALLS\tALLOCATOR")
	for _, p := range r.Processes {
		pid := strconv.FormatUint(uint64(p.PID), 10)
		if p.FoldedProcesses > 0 {
			pid = "(" + plural(uint64(p.FoldedProcesses), "proc") + ")"

		}
		frees, out, mmaps, brks := commas(p.Frees), commas(p.OutstandingCount)+" ("+bytesText(p.OutstandingBytes)+")", commas(p.MmapCalls), commas(p.BrkCalls)
		files := bytesText(p.MappedFileBytes)
		if r.NotTraced() {
			frees, out, mmaps, brks, files = "-", "-", "-", "-", "-" // count mode traces no frees and no memory syscalls
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			pid, cmpOr(esc(p.Comm), "?"), cmpOr(esc(string(p.Role)), "-"), exitText(p),
			commas(p.Allocations), bytesText(p.AllocatedBytes), frees, out, mmaps, brks, files, commas(p.SocketSyscalls), allocatorText(p))
	}
	tw.Flush()
}

// allocatorText names the allocator a process's heap calls were probed in; "none" when no
// object it mapped exports malloc (the warnings say why), "-" for a folded group.
func allocatorText(p Process) string {
	switch {
	case p.Allocator != nil:
		return esc(p.Allocator.Name)
	case p.FoldedProcesses > 0:
		return "-"
	}
	return "none"
}

// pidText shows pid 0, which no traced process has, as a folded group.
func pidText(pid uint32) string {
	if pid == 0 {
		return "(folded)"
	}
	return strconv.FormatUint(uint64(pid), 10)
}

func exitText(p Process) string {
	switch {
	case p.ExitCode != nil:
		return strconv.Itoa(*p.ExitCode)
	case p.ExitSignal != 0:
		return "sig " + strconv.Itoa(p.ExitSignal) + " (" + unix.SignalName(syscall.Signal(p.ExitSignal)) + ")"
	}
	return "-"
}

func (r *Report) sites(b *bytes.Buffer) {
	sites := r.ShownSites()
	n := min(len(sites), max(r.topSites, 1))
	if r.topSites == 0 {
		n = min(len(sites), 20) // a Report decoded from JSON has no options
	}
	what := "allocation sites"
	if r.withFileMaps {
		what = "call sites, file mappings included"
	}
	fmt.Fprintf(b, "\nTOP CALL SITES (%d of %d %s, by bytes)\n", n, len(sites), what)
	// Each site leads with its rank; "site #ID" is the stable id JSON and the other sections use.
	for rank, s := range sites[:n] {
		kind := s.Kind
		if s.FileBacked {
			kind += " (file)"
		}
		fmt.Fprintf(b, "%d. site #%d  %s  pid %s %s  count %s  bytes %s",
			rank+1, s.ID, kind, pidText(s.PID), cmpOr(esc(s.Comm), "?"), commas(s.Count), bytesText(s.Bytes))
		if !r.NotTraced() {
			fmt.Fprintf(b, "  outstanding %s (%s)", commas(s.OutstandingCount), bytesText(s.OutstandingBytes))
		}
		if s.OutstandingCount > 0 {
			fmt.Fprintf(b, " oldest %s", ageText(s.OldestOutstandingAgeSeconds))
		}
		if s.Failed > 0 {
			fmt.Fprintf(b, "  failed %s", commas(s.Failed))
		}
		if s.FoldedSites > 0 {
			fmt.Fprintf(b, "  (%s folded)", plural(uint64(s.FoldedSites), "call site"))
		}
		b.WriteByte('\n')
		for i, f := range s.Stack {
			if i == maxTextFrames {
				fmt.Fprintf(b, "    ... %d more frames\n", len(s.Stack)-i)
				break
			}
			fmt.Fprintf(b, "    %s\n", frameText(&f))
		}
		if len(s.Stack) == 0 {
			b.WriteString("    (no stack)\n")
		}
	}
}

// unmatchedFrees names who freed blocks the trace never saw allocated.
func (r *Report) unmatchedFrees(b *bytes.Buffer) {
	if len(r.UnmatchedFreeSites) == 0 {
		return
	}
	var total uint64
	for _, f := range r.UnmatchedFreeSites {
		total += f.Count
	}
	fmt.Fprintf(b, "\nUNMATCHED FREES (blocks never seen allocated), by caller: %s\n", commas(total))
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	for i, f := range r.UnmatchedFreeSites {
		if i == max(r.topSites, 20) {
			fmt.Fprintf(tw, "  ... %d more callers\n", len(r.UnmatchedFreeSites)-i)
			break
		}
		caller := "(unknown caller)"
		if n := len(f.Caller); n > 0 {
			caller = frameText(&f.Caller[0]) // the innermost inlined function says most
			if n > 1 {
				caller += " in " + esc(f.Caller[n-1].Symbol)
			}
		}
		fmt.Fprintf(tw, "  pid %s %s\t%s\t%s\n", pidText(f.PID), cmpOr(esc(f.Comm), "?"), plural(f.Count, "free"), caller)
	}
	tw.Flush()
}

// frameText is the symbol, with (file:line) when known.
func frameText(f *StackFrame) string {
	s := esc(f.Symbol)
	if f.Inlined {
		s += " [inlined]"
	}
	if f.TailCall {
		s += " [tail call]"
	}
	if f.File != "" && f.Line > 0 {
		s += fmt.Sprintf(" (%s:%d)", esc(f.File), f.Line)
	}
	return s
}

func (r *Report) socketPath(b *bytes.Buffer) {
	sp := &r.SocketPath
	fmt.Fprintf(b, "\nSOCKET PATH\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tROLE\tSOCKCALLS\tALLOCS AFTER 1ST SOCKET CALL\tBYTES\tVIA SOCKET CALLS")
	for _, x := range sp.Processes {
		after := commas(x.AllocsAfterFirstCall)
		if x.AfterIsUpperBound {
			after = "<= " + after
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", x.PID, cmpOr(esc(x.Comm), "?"), cmpOr(esc(string(x.Role)), "-"),
			commas(x.Syscalls), after, bytesText(x.BytesAfterFirstCall), commas(x.UserAllocations))
	}
	tw.Flush()
	for _, x := range sp.Processes {
		if len(x.Sources) == 0 {
			continue
		}
		fmt.Fprintf(b, "sources after the first socket call, pid %d (%s):\n", x.PID, roleText(x.Role))
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		for _, s := range x.Sources {
			line := fmt.Sprintf("  #%d\t%s\t%s\t%s\t%s", s.Site, s.Kind, plural(s.Count, "call"), bytesText(s.Bytes), esc(s.Function))
			if s.Entry != "" && s.Entry != s.Function {
				line += " called from " + esc(s.Entry)
			}
			if s.Caller != "" && s.Caller != s.Function {
				line += " in " + esc(s.Caller)
			}
			fmt.Fprintln(tw, line)
		}
		tw.Flush()
	}
	fmt.Fprintf(b, "socket syscalls: %s; allocations with a socket call on the stack: %s (%s)",
		commas(sp.Syscalls), commas(sp.UserAllocations), bytesText(sp.UserBytes))
	if len(sp.UserAllocationSites) > 0 {
		fmt.Fprintf(b, " at %s", siteList(sp.UserAllocationSites))
	}
	if sp.UnresolvedAllocations > 0 {
		fmt.Fprintf(b, "; %s without a symbolized caller", commas(sp.UnresolvedAllocations))
	}
	verdict := "holds"
	if !sp.Holds {
		verdict = "does not hold: " + esc(sp.Reason)
	}
	fmt.Fprintf(b, "\nverdict: %s\n", verdict)
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Escape is esc for other writers of names that processes choose (udstrace top): one rule.
func Escape(s string) string { return esc(s) }

// esc makes s safe for a terminal: control characters and invalid UTF-8 get Go escapes.
func esc(s string) string {
	clean := utf8.ValidString(s)
	for _, r := range s {
		if !clean || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// maxTextFiles bounds the FILE MAPPINGS section; JSON has every file.
const maxTextFiles = 10

// fileMaps lists the files the processes mapped: not allocations, kept apart from them.
func (r *Report) fileMaps(b *bytes.Buffer) {
	if len(r.FileMappings) == 0 {
		return
	}
	var total uint64
	procs := map[uint32]bool{}
	for _, fm := range r.FileMappings {
		total += fm.Bytes
		procs[fm.PID] = true
	}
	hint := "--include-file-maps shows their call sites"
	if r.withFileMaps {
		hint = "their call sites are in TOP CALL SITES"
	}
	fmt.Fprintf(b, "\nFILE MAPPINGS (not allocations: %s of %s mapped by %s; %s)\n",
		bytesText(total), plural(uint64(len(r.FileMappings)), "file"), plural(uint64(len(procs)), "process"), hint)
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tMAPS\tBYTES\tSTILL MAPPED\tFILE")
	for i, fm := range r.FileMappings {
		if i == maxTextFiles {
			fmt.Fprintf(tw, "...\t%d more files\t\t\t\t\n", len(r.FileMappings)-i)
			break
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", pidText(fm.PID), cmpOr(esc(fm.Comm), "?"), commas(fm.Maps),
			bytesText(fm.Bytes), bytesText(fm.OutstandingBytes), esc(fm.File))
	}
	tw.Flush()
}
