package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/session"
)

// verify prints the uprobe-vs-interposer comparison on stderr; a mismatch is exit status 1.
func verify(ctx context.Context, o options, command []string, rep *report.Report) int {
	if o.workload != "" {
		fmt.Fprintln(os.Stderr, "udstrace: --verify compares a command; for the workload, the tests compare it with the interposer")
		return exitUsage
	}
	rows, err := session.Verify(ctx, command, rep)
	if err != nil {
		fmt.Fprintf(os.Stderr, "udstrace: %s\n", explain(err))
		return exitFailure
	}
	tw := tabwriter.NewWriter(os.Stderr, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nVERIFY (uprobes vs LD_PRELOAD counter)\nCOMM\tPID\tFUNCTION\tUDSTRACE\tPRELOAD\tRESULT")
	code := exitOK
	for _, r := range rows {
		result := "MATCH"
		if !r.Match {
			result, code = "MISMATCH", exitMismatch
		}
		for i, k := range r.Kinds {
			res := ""
			if i == 0 {
				res = result
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\n", r.Comm, r.TracedPID, k.Kind, k.Traced, k.Preload, res)
		}
		if len(r.Kinds) == 0 {
			fmt.Fprintf(tw, "%s\t%d\t-\t0\t0\t%s\n", r.Comm, r.TracedPID, result)
		}
	}
	tw.Flush()
	for _, r := range rows {
		if len(r.Explanation) > 0 {
			fmt.Fprintf(os.Stderr, "%s (pid %d):\n  %s\n", r.Comm, r.TracedPID, strings.Join(r.Explanation, "\n  "))
		}
	}
	return code
}
