package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/udstrace/udstrace/pkg/report"
)

// viewFailure is a failure of view (reading the report, writing the page): udstrace's failure,
// not a usage error.
type viewFailure struct{ error }

func (f viewFailure) Unwrap() error { return f.error }

// newView is `udstrace view REPORT.json -o REPORT.html`: the HTML page of a saved JSON report,
// so that a report taken on a server is looked at elsewhere.
func newView() *cobra.Command {
	var output string
	var fileMaps bool
	c := &cobra.Command{
		Use:     "view [flags] REPORT.json",
		Short:   "write the HTML page (flame graphs, memory over time, leaks) of a saved JSON report",
		Example: "  udstrace run -f json -o report.json -- ./myprog\n  udstrace view report.json -o report.html",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			rep, err := readSavedReport(args[0])
			if err != nil {
				return viewFailure{err}
			}
			if fileMaps {
				rep.IncludeFileMaps()
			}
			out, commit, err := openOutput(output)
			if err != nil {
				return viewFailure{errors.New(explain(err))}
			}
			if err := rep.WriteHTML(out); err != nil {
				commit(false)
				return viewFailure{fmt.Errorf("writing page: %w", err)}
			}
			if err := commit(true); err != nil {
				return viewFailure{errors.New(explain(err))}
			}
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "", "write the page to `FILE` instead of stdout (- : stdout)")
	c.Flags().BoolVar(&fileMaps, "include-file-maps", false, "show file mappings' call sites at first (the page can switch them on either way)")
	return c
}

// readSavedReport reads a report udstrace wrote with --format json.
func readSavedReport(path string) (*report.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading report: %w", err)
	}
	defer f.Close()
	var rep report.Report
	if err := json.NewDecoder(bufio.NewReaderSize(f, 1<<20)).Decode(&rep); err != nil {
		return nil, fmt.Errorf("reading report %s: %w", path, err)
	}
	if rep.Schema != report.Schema {
		return nil, fmt.Errorf("reading report %s: schema %q, not %q: write it with udstrace --format json", path, rep.Schema, report.Schema)
	}
	return &rep, nil
}
