package session

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// manySitesSrc is a C program with n functions, each calling malloc from its own place: n
// distinct call sites in one process.
func manySitesSrc(n int) string {
	var b strings.Builder
	b.WriteString("#include <stdlib.h>\nvoid *volatile sink;\n")
	for i := range n {
		fmt.Fprintf(&b, "__attribute__((noinline)) void f%d(void) { sink = malloc(%d); }\n", i, 16+i%200)
	}
	b.WriteString("int main(void) {\n")
	for i := range n {
		fmt.Fprintf(&b, "\tf%d();\n", i)
	}
	b.WriteString("\treturn 0;\n}\n")
	return b.String()
}

// TestMaxSites: a real program with 5,000 distinct call sites, traced with --max-sites 100, has
// at most 100 sites, its malloc calls and bytes summed over them equal to the interposer's
// counts, and a warning saying what was folded.
func TestMaxSites(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	bin := testenv.CompileC(t, "manysites", manySitesSrc(5000))
	truth := truthOf(t, bins.Allocount, bin)
	o := testOptions(t)
	o.Command, o.MaxSites = []string{bin}, 100
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.LostEvents != 0 {
		t.Fatalf("%d events lost: the comparison needs all", rep.LostEvents)
	}
	var calls, bytes uint64
	folded := 0
	for _, s := range rep.Sites {
		if s.Kind == "malloc" {
			calls += s.Count
			bytes += s.Bytes
		}
		folded += s.FoldedSites
	}
	if want := truth["malloc"]; calls != want[0] || bytes != want[1] {
		t.Errorf("sites sum to %d mallocs, %d bytes; the interposer counted %d, %d", calls, bytes, want[0], want[1])
	}
	if len(rep.Sites) > 100 || folded < 4900 {
		t.Errorf("%d sites, %d of them folded: want at most 100, with at least 4,900 folded", len(rep.Sites), folded)
	}
	if !strings.Contains(strings.Join(rep.Warnings, "\n"), "past --max-sites 100") {
		t.Errorf("warnings %q: none says sites were folded past --max-sites 100", rep.Warnings)
	}
}
