package main

import (
	"fmt"
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
