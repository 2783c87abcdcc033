package session

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// gdbStack is one malloc breakpoint hit as gdb's bt prints it, up to main.
type gdbStack struct {
	bytes uint64
	names []string
}

var (
	// The name runs to the first " (" (its arguments): C++ names hold spaces ("operator
	// new(unsigned long) ()", "std::vector<int, std::allocator<int> >::push_back (...)").
	gdbFrame = regexp.MustCompile(`^#\d+\s+(?:0x[0-9a-f]+ in )?(.+?) \(`)
	gdbBytes = regexp.MustCompile(`bytes=(?:bytes@entry=)?(\d+)`)
)

// gdbMallocStacks runs argv under gdb with a breakpoint on libc's malloc and returns every backtrace.
func gdbMallocStacks(t *testing.T, argv []string) []gdbStack {
	t.Helper()
	if _, err := exec.LookPath("gdb"); err != nil {
		t.Fatal("gdb is the oracle for this test: install it (apt-get install gdb)")
	}
	script := filepath.Join(t.TempDir(), "bt.gdb")
	cmds := "set pagination off\nset breakpoint pending on\nbreak __libc_malloc\ncommands\nsilent\nbt\ncontinue\nend\nrun\n"
	if err := os.WriteFile(script, []byte(cmds), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("gdb", append([]string{"-batch", "-nx", "-x", script, "--args"}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, out)
	}
	var stacks []gdbStack
	var cur *gdbStack
	for _, line := range strings.Split(string(out), "\n") {
		m := gdbFrame.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if strings.HasPrefix(line, "#0 ") {
			stacks = append(stacks, gdbStack{})
			cur = &stacks[len(stacks)-1]
			if b := gdbBytes.FindStringSubmatch(line); b != nil {
				cur.bytes, _ = strconv.ParseUint(b[1], 10, 64)
			}
		}
		if cur != nil && (len(cur.names) == 0 || cur.names[len(cur.names)-1] != "main") {
			cur.names = append(cur.names, m[1])
		}
	}
	return stacks
}

// canonical folds glibc's internal spellings of one function (__GI___libc_malloc, _IO_new_fdopen) into one name,
// and spells a C++ function the way gdb and a demangler both can: no parameter list, no return type.
func canonical(name string) string {
	name = cxxBareName(name)
	for changed := true; changed; {
		changed = false
		for _, p := range []string{"__GI_", "_IO_new_", "__libc_", "_IO_", "_"} {
			if strings.HasPrefix(name, p) && len(name) > len(p) {
				name, changed = name[len(p):], true
			}
		}
	}
	return name
}

// cxxBareName drops a demangled C++ name's trailing parameter list (and qualifiers after it) and
// any return type before it: "void std::vector<int>::_M_realloc_insert<int>(iterator, int&&)" and
// gdb's "std::vector<int>::_M_realloc_insert<int>" are one function. A C name is left as it is.
func cxxBareName(name string) string {
	if i := strings.LastIndexByte(name, ')'); i > 0 {
		depth := 0
		for j := i; j >= 0; j-- {
			switch name[j] {
			case ')':
				depth++
			case '(':
				depth--
			}
			if depth == 0 {
				if j > 0 { // "(anonymous namespace)" alone is a name, not a parameter list
					name = name[:j]
				}
				break
			}
		}
	}
	depth := 0
	for j := len(name) - 1; j >= 0; j-- {
		switch name[j] {
		case '>', ')':
			depth++
		case '<', '(':
			depth--
		case ' ':
			if depth == 0 && !strings.HasSuffix(name[:j], "operator") {
				return name[j+1:]
			}
		}
	}
	return name
}

// normalized canonicalizes names, drops repeats (inlined copies of one function), and stops at main.
func normalized(names []string) []string {
	var out []string
	for _, n := range names {
		c := canonical(n)
		if len(out) == 0 || out[len(out)-1] != c {
			out = append(out, c)
		}
		if n == "main" {
			break
		}
	}
	return out
}

// checkAgainstGDB asserts that every malloc gdb saw in argv has a udstrace site with the same frames
// (a site is one stack: a vector's growth from one call site is one site of several sizes).
func checkAgainstGDB(t *testing.T, v *view, pid uint32, gdb []gdbStack) {
	t.Helper()
	if len(gdb) == 0 {
		t.Fatal("gdb saw no malloc")
	}
	for _, g := range gdb {
		want := strings.Join(normalized(g.names), " <- ")
		var seen []string
		for _, s := range v.Sites {
			if s.PID != pid || s.Kind != "malloc" { // one site per stack, whatever sizes went through it
				continue
			}
			var names []string
			for _, f := range s.Stack {
				names = append(names, f.Function)
			}
			got := strings.Join(normalized(names), " <- ")
			if got == want {
				seen = nil
				break
			}
			seen = append(seen, got)
		}
		if seen != nil {
			t.Errorf("malloc(%d): gdb's stack %q has no udstrace site with the same frames; udstrace has:\n  %s", g.bytes, want, strings.Join(seen, "\n  "))
		}
	}
}

// stackModes are the modes every gdb comparison runs in: full mode's stacks (taken at the
// allocator's return) and count mode's (aggregated in the kernel, from the allocator's entry).
var stackModes = []string{"full", "count"}

// checkCountSites asserts what count mode's sites are: calls and bytes with a stack, no frees
// and nothing outstanding (count mode does not trace frees).
func checkCountSites(t *testing.T, rep *report.Report) {
	t.Helper()
	if rep.Mode != "count" {
		t.Errorf("report mode %q, want count", rep.Mode)
	}
	for _, s := range rep.Sites {
		if s.Count == 0 || len(s.Stack) == 0 || s.OutstandingCount != 0 || s.OutstandingBytes != 0 {
			t.Errorf("count-mode site %s of pid %d: %d calls, %d frames, %d outstanding (%d B): want calls, a stack, nothing outstanding",
				s.Kind, s.PID, s.Count, len(s.Stack), s.OutstandingCount, s.OutstandingBytes)
		}
	}
	for _, p := range rep.Processes {
		if p.Frees != 0 {
			t.Errorf("count mode: %s (pid %d) has %d frees, want none traced", p.Comm, p.PID, p.Frees)
		}
	}
}

func TestStdioStacksMatchGDB(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	sock := filepath.Join(t.TempDir(), "g.sock")
	srv := exec.Command(bins.Server, sock, "1")
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Read(make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	gdb := gdbMallocStacks(t, []string{bins.Client, "stdio", sock, "3", "0"})
	if err := srv.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, mode := range stackModes {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Workload, o.Mode = "echo", mode
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			checkAgainstGDB(t, v, v.pidOf(t, "client-stdio"), gdb)
			if mode == "count" {
				checkCountSites(t, rep)
			}
		})
	}
}

func TestNoFramePointerChainMatchesGDB(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	gdb := gdbMallocStacks(t, []string{bins.Chain, "1"})
	levels := 0
	for _, g := range gdb {
		if strings.Contains(strings.Join(g.names, " "), "level5") {
			levels++
		}
	}
	if levels == 0 {
		t.Fatalf("gdb never saw level5 allocate: %+v", gdb)
	}
	for _, mode := range stackModes {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Command, o.Mode = []string{bins.Chain, "1"}, mode
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			checkAgainstGDB(t, v, v.Processes[0].PID, gdb)

			// chain exits right after its last allocation: every frame must still be symbolized.
			for _, s := range v.Sites {
				for i, f := range s.Stack {
					if f.Function == "" {
						t.Errorf("site %s of %d B: frame %d (%s in %q) unresolved", s.Kind, s.Bytes, i, f.Symbol, f.Module)
					}
				}
			}
			if mode == "count" {
				checkCountSites(t, rep)
			}
		})
	}
}
