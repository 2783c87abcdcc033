package symbolize

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// callReturns parses objdump -d: for each direct "call/jmp ... <fn>" in function in, the address
// just after it (the instruction's address plus its length in bytes), by callee name.
func callReturns(t *testing.T, bin, in string) map[string]uint64 {
	t.Helper()
	out := run(t, "objdump", "-d", bin)
	insn := regexp.MustCompile(`^\s+([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t(call|jmp)\s+[0-9a-f]+ <([^>+]+)>`)
	head := regexp.MustCompile(`^[0-9a-f]+ <([^>]+)>:$`)
	got := map[string]uint64{}
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		if m := head.FindStringSubmatch(line); m != nil {
			cur = m[1]
			continue
		}
		if m := insn.FindStringSubmatch(line); m != nil && cur == in {
			addr, _ := strconv.ParseUint(m[1], 16, 64)
			got[m[4]] = addr + uint64(len(strings.Fields(m[2])))
		}
	}
	return got
}

// TestTailCallsLikeGDB builds the tailcall workload (-O2 -g: each level jumps to the next) and
// asks for the frames between leaf and the raw frame above it. The calls and jumps come from
// objdump, the expectations from gdb's rules (call_site_find_chain): one path gives all its
// frames, two paths only the frames they share at their ends, two paths sharing none nothing.
func TestTailCallsLikeGDB(t *testing.T) {
	needTool(t, "objdump")
	src, err := os.ReadFile(filepath.Join("..", "..", "workload", "csrc", "tailcall.c"))
	if err != nil {
		t.Fatal(err)
	}
	// DWARF 5 writes DW_TAG_call_site, DWARF 4 GCC's DW_TAG_GNU_call_site.
	for _, v := range []string{"-gdwarf-5", "-gdwarf-4"} {
		t.Run(v, func(t *testing.T) {
			bin := compile(t, "gcc", t.TempDir(), "tailcall.c", string(src), "-O2", "-g", v, "-fomit-frame-pointer")
			checkTailCalls(t, bin)
		})
	}
}

func checkTailCalls(t *testing.T, bin string) {
	b := openPath(t, bin, Options{})
	b.Preload()
	sym, ok := b.symbolAddr("leaf")
	if !ok {
		t.Fatal("no symbol leaf")
	}
	leaf := sym.addr
	// Each jump's next address is the pc of the frame it leaves (objdump's view).
	jumps := map[string]uint64{}
	for _, fn := range []string{"second", "third", "both", "zeta", "outer"} {
		for callee, next := range callReturns(t, bin, fn) {
			jumps[fn+">"+callee] = next
		}
	}
	for _, c := range []struct {
		caller, callee string
		want           []string // innermost first
		pcs            []uint64
	}{
		{"first", "second", []string{"third", "second"}, []uint64{jumps["third>leaf"], jumps["second>third"]}},
		{"main", "fork2", []string{"zeta", "both"}, []uint64{jumps["zeta>leaf"], jumps["both>zeta"]}},
		{"main", "fork1", nil, nil},
		// The jump is in inner's body, inlined into outer: gdb names the frame inner.
		{"main", "outer", []string{"inner"}, []uint64{jumps["outer>leaf"]}},
		{"first", "leaf-no-such-call", nil, nil},
	} {
		ret := callReturns(t, bin, c.caller)[c.callee]
		var names []string
		var pcs []uint64
		for _, f := range TailCalls(b, ret, b, leaf+4, nil) {
			if f.InCallee {
				t.Errorf("%s: frame %+v in the callee's file, which is the caller's", c.caller, f)
			}
			s := b.Symbolize(f.PC - 1)
			names, pcs = append(names, s[0].Function), append(pcs, f.PC)
		}
		if strings.Join(names, ",") != strings.Join(c.want, ",") || fmt.Sprint(pcs) != fmt.Sprint(c.pcs) {
			t.Errorf("%s -> %s -> leaf: frames %v at %x, want %v at %x", c.caller, c.callee, names, pcs, c.want, c.pcs)
		}
	}
	// A call site naming a function no file here defines (malloc, in libc): nothing.
	if fr := TailCalls(b, callReturns(t, bin, "leaf")["malloc@plt"], b, leaf, nil); fr != nil {
		t.Errorf("leaf's own call: %+v, want none", fr)
	}
}
