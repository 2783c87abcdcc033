package session

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// kidsSrc keeps argv[1] children alive at once (the reproduction), each making argv[2]
// mallocs once they all exist, so a table of traced processes smaller than that must overflow.
const kidsSrc = `#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
void *volatile sink;
int main(int argc, char **argv) {
	int n = atoi(argv[1]), m = atoi(argv[2]), go[2];
	if (pipe(go)) return 1;
	for (int i = 0; i < n; i++) {
		pid_t p = fork();
		if (p < 0) { perror("fork"); return 1; }
		if (p == 0) {
			char c;
			close(go[1]);
			if (read(go[0], &c, 1) != 0) return 3;
			for (int j = 0; j < m; j++)
				sink = malloc(100 + j);
			_exit(0);
		}
	}
	close(go[1]); /* every child sees end of file at once */
	while (wait(NULL) > 0) ;
	return 0;
}
`

// TestFullProcessTableIsCounted: with --table-size 1024 and 2,000 live children, the processes the
// kernel's table cannot hold are counted, with their mallocs: traced + counted lost == what the
// interposer counts, in both modes, and a warning names --table-size.
func TestFullProcessTableIsCounted(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	bin := testenv.CompileC(t, "kids", kidsSrc)
	argv := []string{bin, "2000", "5"}
	_, counts := testenv.Interpose(t, bins.Allocount, argv)
	var truth uint64
	for _, c := range counts {
		truth += expected(c)["malloc"][0]
	}
	if len(counts) != 2001 || truth < 10000 {
		t.Fatalf("interposer: %d processes, %d mallocs; want 2,001 and at least 10,000", len(counts), truth)
	}
	for _, mode := range []string{"full", "count"} {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Command, o.Mode, o.TableSize = argv, mode, 1024
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			var tracked uint64
			for _, p := range rep.Processes {
				tracked += p.HeapByKind["malloc"].Calls
			}
			d := rep.LostDetail
			if d.UntracedProcesses == 0 || d.TableFull.Processes != d.UntracedProcesses {
				t.Errorf("untraced_processes %d, table_full.processes %d: want equal and > 0 (1,024 entries for 2,001 processes)", d.UntracedProcesses, d.TableFull.Processes)
			}
			if tracked+d.UntracedCalls != truth {
				t.Errorf("%d mallocs traced + %d counted lost (untraced_process_calls) = %d, interposer counted %d", tracked, d.UntracedCalls, tracked+d.UntracedCalls, truth)
			}
			if rep.LostEvents < d.UntracedCalls || d.Other < d.UntracedCalls {
				t.Errorf("lost_events %d, other %d: must include the %d untraced calls", rep.LostEvents, d.Other, d.UntracedCalls)
			}
			want := strconv.FormatUint(d.UntracedProcesses, 10) + " processes not traced"
			if len(rep.Warnings) == 0 || !strings.Contains(rep.Warnings[0], want) || !strings.Contains(rep.Warnings[0], "--table-size 4096") {
				t.Errorf("first warning %q: want it to say %q and name --table-size 4096", first(rep.Warnings), want)
			}
		})
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
