// Command stress checks udstrace's reliability and safety end to end, as root, from the repository
// root after `make build`: event loss accounting under a flood, nothing left behind however udstrace
// ends, concurrent tracers, memory over a soak and over a daemon (--serve) soak, and a churning
// target. It prints a table of what held and exits non-zero if anything did not.
//
//	go run ./stress [-flood 30s] [-soak 2m] [-serve-soak 2m] [-only flood,leftovers,concurrent,soak,serve,churn,procs,files]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// result is one row of the final table.
type result struct {
	check  string // CHECK
	tried  string // WHAT WAS TRIED
	held   string // HELD: yes, NO, skipped
	detail []string
}

func (r *result) note(format string, args ...any) {
	r.detail = append(r.detail, fmt.Sprintf(format, args...))
}

// fail marks the row as not holding and says why.
func (r *result) fail(format string, args ...any) {
	r.held = "NO"
	r.note("FAIL: "+format, args...)
}

func newResult(check, tried string) *result { return &result{check: check, tried: tried, held: "yes"} }

// progress prints a line to stderr, prefixed with the time since the start.
var started = time.Now()

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[stress %6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	flood := flag.Duration("flood", 30*time.Second, "flood: how long the traced flood should run (sets the call count)")
	soak := flag.Duration("soak", 2*time.Minute, "soak: how long the soak trace runs")
	serveSoak := flag.Duration("serve-soak", 2*time.Minute, "serve: how long the daemon (--serve) soak runs")
	only := flag.String("only", "", "comma-separated checks to run (flood, leftovers, concurrent, soak, serve, churn, procs, files); empty: all")
	keep := flag.Bool("keep", false, "keep the scratch directory (reports, logs, programs)")
	flag.Parse()

	env, err := setup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "stress: %v\n", err)
		os.Exit(2)
	}
	if !*keep {
		defer os.RemoveAll(env.work)
	}
	progress("scratch directory %s", env.work)

	want := func(name string) bool {
		if *only == "" {
			return true
		}
		for _, n := range strings.Split(*only, ",") {
			if strings.TrimSpace(n) == name {
				return true
			}
		}
		return false
	}
	var rows []*result
	if want("flood") {
		rows = append(rows, checkFlood(env, *flood)...)
	}
	if want("leftovers") {
		rows = append(rows, checkLeftovers(env)...)
	}
	if want("concurrent") {
		rows = append(rows, checkConcurrent(env)...)
	}
	if want("soak") {
		rows = append(rows, checkSoak(env, *soak))
	}
	if want("serve") {
		rows = append(rows, checkServeSoak(env, *serveSoak))
	}
	if want("churn") {
		rows = append(rows, checkChurn(env))
	}
	if want("procs") {
		rows = append(rows, checkProcs(env)...)
	}
	if want("files") {
		rows = append(rows, checkFiles(env)...)
	}

	failed := printResults(rows)
	progress("done in %s", time.Since(started).Round(time.Second))
	if *keep {
		progress("kept %s", env.work)
	}
	if failed > 0 {
		if !*keep {
			os.RemoveAll(env.work)
		}
		os.Exit(1)
	}
}

// printResults prints every row's details, then the table; it returns how many rows did not hold.
func printResults(rows []*result) int {
	failed, skipped := 0, 0
	fmt.Println()
	fmt.Println("Details")
	for _, r := range rows {
		fmt.Printf("  %s — %s: %s\n", r.check, r.tried, r.held)
		for _, d := range r.detail {
			fmt.Printf("      %s\n", d)
		}
		switch r.held {
		case "NO":
			failed++
		case "skipped":
			skipped++
		}
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tWHAT WAS TRIED\tHELD")
	fmt.Fprintln(tw, "-----\t--------------\t----")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.check, r.tried, r.held)
	}
	tw.Flush()
	if skipped > 0 {
		fmt.Printf("\n%d passed, %d failed, %d skipped\n", len(rows)-failed-skipped, failed, skipped)
	} else {
		fmt.Printf("\n%d passed, %d failed\n", len(rows)-failed, failed)
	}
	return failed
}
