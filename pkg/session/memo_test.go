package session

import (
	"context"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestMemoTellsTwinCallersApart runs twins, whose malloc entries all share pc, stack pointer and
// frame pointer; only a return address further up tells via_a's calls from via_b's. The kernel
// reuses a thread's last stack when its registers and every stack word the walk read are
// unchanged (stacks.memo): the memo must be used, and must never hand via_b's calls via_a's stack.
// The oracle is the program's own call pattern: ROUNDS calls through via_a and ROUNDS + ROUNDS/3
// (rounded up) through via_b.
func TestMemoTellsTwinCallersApart(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	const rounds = 3000
	want := map[string]uint64{"via_a": rounds, "via_b": rounds + (rounds+2)/3}
	for _, mode := range stackModes {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Command, o.Mode = []string{bins.Twins, "3000"}, mode
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			if *v.LostEvents != 0 {
				t.Fatalf("%d events lost", *v.LostEvents)
			}
			got := map[string]uint64{}
			for _, s := range v.Sites {
				if s.Kind != "malloc" || s.Bytes != 48*s.Count {
					continue
				}
				var names []string
				for _, f := range s.Stack {
					names = append(names, f.Function)
				}
				joined := " " + strings.Join(names, " ") + " "
				a, b := strings.Contains(joined, " via_a "), strings.Contains(joined, " via_b ")
				switch {
				case a && b:
					t.Errorf("one stack holds both twins: %s", joined)
				case a:
					got["via_a"] += s.Count
				case b:
					got["via_b"] += s.Count
				}
				if (a || b) && !strings.Contains(joined, " leaf ") {
					t.Errorf("twin stack without leaf: %s", joined)
				}
			}
			for k, n := range want {
				if got[k] != n {
					t.Errorf("%s: %d malloc(48) calls under its stacks, want %d", k, got[k], n)
				}
			}
			if rep.Stacks.Memo == 0 {
				t.Errorf("no stack came from the memo (stacks: %+v): the test did not exercise it", rep.Stacks)
			}
			t.Logf("stacks: %d events, %d from the memo", rep.Stacks.Events, rep.Stacks.Memo)
		})
	}
}
