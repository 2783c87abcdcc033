package symbolize

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// callReturns parses objdump -d: for each "call/jmp ... <fn>" in function in, the address of the
// next instruction, by callee name.
func callReturns(t *testing.T, bin, in string) map[string]uint64 {
	t.Helper()
	out := run(t, "objdump", "-d", "--no-show-raw-insn", bin)
	insn := regexp.MustCompile(`^\s+([0-9a-f]+):\s+(\S+)\s+(?:[0-9a-f]+ <([^>+]+)>)?`)
	head := regexp.MustCompile(`^[0-9a-f]+ <([^>]+)>:$`)
	got := map[string]uint64{}
	cur, pending := "", ""
	for _, line := range strings.Split(out, "\n") {
		if m := head.FindStringSubmatch(line); m != nil {
			cur, pending = m[1], ""
			continue
		}
		m := insn.FindStringSubmatch(line)
		if m == nil || cur != in {
			continue
		}
		addr, _ := strconv.ParseUint(m[1], 16, 64)
		if pending != "" {
			got[pending] = addr
			pending = ""
		}
		if m[3] != "" && (m[2] == "call" || m[2] == "jmp") {
			pending = m[3]
		}
	}
	return got
}

func TestTailCallsLikeGDB(t *testing.T) {
	needTool(t, "objdump")
	src, err := os.ReadFile(filepath.Join("..", "..", "workload", "csrc", "tailcall.c"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := compile(t, "gcc", dir, "tailcall.c", string(src), "-O2", "-g", "-fomit-frame-pointer")
	b := openPath(t, bin, Options{})
	b.Preload()
	leaf, ok := b.symbolAddr("leaf")
	if !ok {
		t.Fatal("no symbol leaf")
	}
	for _, c := range []struct {
		caller, callee string
		want           []string
	}{
		{"first", "second", []string{"third", "second"}},
		{"main", "fork2", []string{"zeta", "both"}},
		{"main", "fork1", nil},
	} {
		ret := callReturns(t, bin, c.caller)[c.callee]
		fr := TailCalls(b, ret, b, leaf)
		var names []string
		for _, f := range fr {
			s := b.Symbolize(f.PC - 1)
			names = append(names, s[len(s)-1].Function)
		}
		t.Logf("%s: %v %v", c.caller, fr, names)
	}
	_ = leaf
}
