package session

import (
	"context"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// freeNullSrc calls free(NULL) ten times through a volatile pointer (the compiler cannot drop
// the calls) and frees three real blocks.
const freeNullSrc = `#include <stdlib.h>
int main(void) {
	void *volatile none = 0;
	for (int i = 0; i < 10; i++)
		free(none);
	for (int i = 0; i < 3; i++) {
		void *volatile p = malloc(32);
		free(p);
	}
	return 0;
}
`

// free(NULL) is a call of free: heap_calls_by_kind.free.calls counts it, in full mode with and
// without sampling, as the interposer does; frees (blocks released) does not. Count mode does
// not probe free at all, so it reports no free calls, free(NULL) or not.
func TestFreeNullCounted(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	bin := testenv.CompileC(t, "freenull", freeNullSrc)
	_, truth := testenv.Interpose(t, bins.Allocount, []string{bin})
	if len(truth) != 1 {
		t.Fatalf("interposer wrote %d count files, want 1", len(truth))
	}
	var want map[string][2]uint64
	var calls, released uint64 // calls of free; those with a block (free(NULL) releases none)
	for _, c := range truth {
		f := c["free"]
		if f.Null != 10 || f.Calls != 13 {
			t.Fatalf("the interposer saw %d free calls, %d of them free(NULL): the program makes 13 and 10", f.Calls, f.Null)
		}
		want, calls, released = expected(c), f.Calls, f.Calls-f.Null
	}
	for _, tc := range []struct {
		name   string
		mode   string
		sample uint64
	}{{"full", "full", 0}, {"sampled", "full", 4096}, {"count", "count", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			o := testOptions(t)
			o.Mode, o.SampleBytes = tc.mode, tc.sample
			o.Command = []string{bin}
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Processes) != 1 || rep.LostEvents != 0 {
				t.Fatalf("%d processes, %d lost: want 1 and 0", len(rep.Processes), rep.LostEvents)
			}
			p := rep.Processes[0]
			free := p.HeapByKind["free"]
			if tc.mode == "count" {
				if free.Calls != 0 || p.Frees != 0 {
					t.Errorf("count mode: %d free calls, %d frees: it does not probe free, want none", free.Calls, p.Frees)
				}
				if got := p.HeapByKind["malloc"].Calls; got != want["malloc"][0] {
					t.Errorf("count mode: %d malloc calls, the interposer %d", got, want["malloc"][0])
				}
				return
			}
			if free.Calls != calls {
				t.Errorf("free: %d calls, the interposer %d (10 of them free(NULL))", free.Calls, calls)
			}
			if p.Frees != released || p.UnmatchedFrees != 0 {
				t.Errorf("frees %d, unmatched %d: want the interposer's %d blocks released and none unmatched", p.Frees, p.UnmatchedFrees, released)
			}
		})
	}
}
