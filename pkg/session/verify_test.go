package session

import (
	"context"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestVerifyRealPrograms: udstrace's counts against its own LD_PRELOAD counter on real programs;
// a difference is allowed only when it is explained per call site.
func TestVerifyRealPrograms(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	for _, argv := range [][]string{
		{bins.AllocPattern, "2"},
		{"/bin/ls", "-l", "/"},
		{"/usr/bin/sort", "/etc/passwd"},
	} {
		t.Run(strings.Join(argv, " "), func(t *testing.T) {
			o := testOptions(t)
			o.Command = argv
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := Verify(context.Background(), argv, rep)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) == 0 {
				t.Fatal("nothing compared")
			}
			for _, r := range rows {
				if !r.Match && len(r.Explanation) == 0 {
					t.Errorf("%s (pid %d): counts differ without an explanation: %+v", r.Comm, r.TracedPID, r.Kinds)
				}
				for _, e := range r.Explanation {
					if strings.Contains(e, "not explained") || strings.Contains(e, "more calls than the uprobes") {
						t.Errorf("%s: %s", r.Comm, e)
					}
				}
				if argv[0] == bins.AllocPattern && !r.Match {
					t.Errorf("allocpattern must match exactly: %+v %v", r.Kinds, r.Explanation)
				}
			}
		})
	}
}
