package main

import (
	"fmt"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"unicode/utf8"
)

// printTable prints rows (the first is the header) aligned, or as Markdown.
func printTable(rows [][]string, markdown bool) {
	if markdown {
		for i, r := range rows {
			fmt.Println("| " + strings.Join(r, " | ") + " |")
			if i == 0 {
				sep := make([]string, len(r))
				for j := range sep {
					sep[j] = "---"
					if j > 0 {
						sep[j] = "---:"
					}
				}
				fmt.Println("|" + strings.Join(sep, "|") + "|")
			}
		}
		return
	}
	// Numbers align right; the first column is padded here to align left.
	width := 0
	for _, r := range rows {
		width = max(width, utf8.RuneCountInString(r[0]))
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, r := range rows {
		r = append([]string{r[0] + strings.Repeat(" ", width-utf8.RuneCountInString(r[0]))}, r[1:]...)
		// AlignRight pads before each cell; the trailing tab terminates the last one.
		fmt.Fprintln(w, strings.Join(r, "\t")+"\t")
	}
	w.Flush()
}

func seen(got, want int64) string {
	if got < 0 {
		return "—"
	}
	return fmt.Sprintf("%d/%d", got, want)
}

// ratio prints two decimals, or two significant digits below 0.1.
func ratio(v float64) string {
	if math.Abs(v) < 0.1 {
		return fmt.Sprintf("%.2g", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func count(v int64) string {
	if v < 0 {
		return "—"
	}
	return fmt.Sprint(v)
}

// num formats v, or "—" when v is NaN or negative (not applicable).
func num(v float64, format string) string {
	if math.IsNaN(v) || v < 0 {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

// bytesPer formats bytes per call: one decimal, or two significant digits below 1 (count mode
// sends a stack record, not a record per call).
func bytesPer(v float64) string {
	if !math.IsNaN(v) && v > 0 && v < 1 {
		return fmt.Sprintf("%.2g", v)
	}
	return num(v, "%.1f")
}

// signed formats a difference v: "≈0" when it came out below zero (under the
// noise of what was subtracted), "—" when v is NaN.
func signed(v float64, format string) string {
	if math.IsNaN(v) {
		return "—"
	}
	if v < 0 {
		return "≈0" // below the baseline's noise (bench/README.md)
	}
	return fmt.Sprintf(format, v)
}
