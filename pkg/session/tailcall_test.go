package session

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// gdbFramesScript prints, at each malloc, gdb's frames up to main with their kind: gdb's own
// TAILCALL_FRAME says which frames it put back after a tail call.
const gdbFramesScript = `set pagination off
set breakpoint pending on
break __libc_malloc
commands
silent
python
f = gdb.newest_frame()
out = ["bytes=%d" % int(f.read_var("bytes"))]
while f is not None:
    out.append("%s|%s" % (f.name(), "tail" if f.type() == gdb.TAILCALL_FRAME else "frame"))
    if f.name() == "main":
        break
    f = f.older()
print("STACK " + " ".join(out))
end
continue
end
run
`

// gdbTailStacks runs argv under gdb and returns, by malloc size, each stack as
// "name[tail]" entries: canonical names, outermost last, up to main.
func gdbTailStacks(t *testing.T, argv []string) map[uint64][]string {
	t.Helper()
	if _, err := exec.LookPath("gdb"); err != nil {
		t.Fatal("gdb is the oracle for this test: install it (apt-get install gdb)")
	}
	script := filepath.Join(t.TempDir(), "frames.gdb")
	if err := os.WriteFile(script, []byte(gdbFramesScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("gdb", append([]string{"-batch", "-nx", "-x", script, "--args"}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, out)
	}
	stacks := map[uint64][]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(strings.TrimPrefix(line, "STACK "))
		if !strings.HasPrefix(line, "STACK ") || len(f) < 2 {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(f[0], "bytes="), 10, 64)
		if err != nil {
			t.Fatalf("gdb line %q: %v", line, err)
		}
		var st []string
		for _, fr := range f[1:] {
			name, kind, _ := strings.Cut(fr, "|")
			st = append(st, tailEntry(canonical(name), kind == "tail"))
		}
		stacks[n] = st
	}
	return stacks
}

func tailEntry(name string, tail bool) string {
	if tail {
		return name + "[tail]"
	}
	return name
}

// TestTailCallStacksMatchGDB: the tailcall workload (-O2 -g, every level a jump to the next)
// mallocs under frames that left by tail calls. gdb puts them back from DWARF call sites
// (one path: second and third; two paths agreeing at their end: both and zeta only; two paths
// with nothing in common: nothing; a jump in an inlined body: one frame named by the inlined
// function; libc's qsort, a jump to qsort_r in another module than its caller); udstrace's sites must show the same frames, marked
// tail_call where gdb's are TAILCALL_FRAMEs, in full and count mode, in the JSON, the text
// ("[tail call]") and the folded stacks.
func TestTailCallStacksMatchGDB(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	var gdb map[uint64][]string
	for try := 0; try < 3 && len(gdb) == 0; try++ {
		if gdb = gdbTailStacks(t, []string{bins.TailCall}); len(gdb) == 0 {
			t.Log("gdb saw no malloc (another tracer's uprobe on malloc?): again")
		}
	}
	tails := 0
	for _, size := range []uint64{208, 214, 312, 418} {
		if gdb[size] == nil {
			t.Fatalf("gdb saw no malloc(%d): %v", size, gdb)
		}
		tails += strings.Count(strings.Join(gdb[size], " "), "[tail]")
	}
	if tails == 0 {
		t.Fatalf("gdb shows no tail-call frame: the workload was not built with its jumps and call sites: %v", gdb)
	}
	qsort := false
	for _, st := range gdb {
		qsort = qsort || strings.Contains(strings.Join(st, " "), "qsort_r")
	}
	if !qsort {
		t.Fatalf("gdb saw no malloc under libc's qsort_r: %v", gdb)
	}
	for _, mode := range stackModes {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Command, o.Mode = []string{bins.TailCall}, mode
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			got := map[uint64][]string{}
			for _, s := range v.Sites {
				if s.Kind != "malloc" || s.Count != 1 || gdb[s.Bytes] == nil {
					continue
				}
				var st []string
				for _, f := range s.Stack {
					e := tailEntry(canonical(f.Function), f.TailCall)
					if len(st) == 0 || st[len(st)-1] != e {
						st = append(st, e)
					}
					if f.Function == "main" {
						break
					}
				}
				got[s.Bytes] = st
			}
			for size, want := range gdb {
				if g := strings.Join(got[size], " <- "); g != strings.Join(want, " <- ") {
					t.Errorf("malloc(%d): udstrace %q, gdb %q", size, g, strings.Join(want, " <- "))
				}
			}
			var text, folded bytes.Buffer
			if err := rep.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if err := rep.WriteFolded(&folded, report.FoldedOptions{}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(text.String(), "tailcall!third+0x5 [tail call]") {
				t.Errorf("text report does not mark third as a tail call:\n%s", text.String())
			}
			if !strings.Contains(folded.String(), "main;first;second;third;leaf;malloc 208") {
				t.Errorf("folded stacks lack the tail-call frames:\n%s", folded.String())
			}
			if mode == "count" {
				checkCountSites(t, rep)
			}
		})
	}
}
