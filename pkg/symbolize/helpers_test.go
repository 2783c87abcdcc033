package symbolize

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// compile writes src to dir/name and builds it with compiler into dir/bin.
func compile(t testing.TB, compiler, dir, name, src string, flags ...string) string {
	t.Helper()
	needTool(t, compiler)
	srcPath := filepath.Join(dir, name)
	if err := os.WriteFile(srcPath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, strings.TrimSuffix(name, filepath.Ext(name)))
	args := append(append([]string{}, flags...), "-o", bin, srcPath)
	run(t, compiler, args...)
	return bin
}

func openPath(t testing.TB, path string, opts Options) *Binary {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if opts.Path == "" {
		opts.Path = path
	}
	b, err := Open(f, st.Size(), opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return b
}

// elfSym finds a symbol's address and size with debug/elf, as an independent source.
func elfSym(t testing.TB, path, name string) (uint64, uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, _ := f.Symbols()
	dyn, _ := f.DynamicSymbols()
	for _, s := range append(syms, dyn...) {
		if s.Name == name && s.Value != 0 {
			return s.Value, s.Size
		}
	}
	t.Fatalf("symbol %s not found in %s", name, path)
	return 0, 0
}

// oracleFrame is one addr2line frame.
type oracleFrame struct {
	fn   string
	file string
	line int
}

// addr2line runs `addr2line -a -f -i -C -e bin addrs...` and groups frames by address.
func addr2line(t testing.TB, bin string, addrs []uint64) map[uint64][]oracleFrame {
	t.Helper()
	args := []string{"-a", "-f", "-i", "-C", "-e", bin}
	for _, a := range addrs {
		args = append(args, fmt.Sprintf("%#x", a))
	}
	lines := strings.Split(strings.TrimSpace(run(t, "addr2line", args...)), "\n")
	out := map[uint64][]oracleFrame{}
	var cur uint64
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "0x") {
			v, err := strconv.ParseUint(l[2:], 16, 64)
			if err != nil {
				t.Fatalf("bad addr2line address %q", l)
			}
			cur = v
			out[cur] = nil
			continue
		}
		if i+1 >= len(lines) {
			break
		}
		loc := strings.TrimSpace(lines[i+1])
		i++
		if j := strings.Index(loc, " (discriminator"); j >= 0 {
			loc = loc[:j]
		}
		fr := oracleFrame{fn: l}
		if k := strings.LastIndexByte(loc, ':'); k >= 0 {
			fr.file = loc[:k]
			fr.line, _ = strconv.Atoi(loc[k+1:])
		}
		if fr.fn == "??" {
			fr.fn = ""
		}
		if fr.file == "??" {
			fr.file = ""
		}
		out[cur] = append(out[cur], fr)
	}
	return out
}

// compareOracle checks frames against addr2line, ignoring the outermost
// function name when skipOuterName (symbol aliases differ from DWARF names).
func compareOracle(t testing.TB, addr uint64, got []Frame, want []oracleFrame, skipOuterName bool) bool {
	t.Helper()
	if len(want) == 1 && want[0].file == "" && want[0].fn == "" {
		return true // addr2line knows nothing; symbol-only results are fine
	}
	if len(got) != len(want) {
		t.Errorf("%#x: got %d frames %+v, addr2line %d frames %+v", addr, len(got), got, len(want), want)
		return false
	}
	ok := true
	for i := range want {
		g, w := got[i], want[i]
		outer := i == len(want)-1
		if !(outer && skipOuterName) && g.Function != w.fn {
			t.Errorf("%#x frame %d: function %q, addr2line %q", addr, i, g.Function, w.fn)
			ok = false
		}
		if w.file != "" && (filepath.Base(g.File) != filepath.Base(w.file) || g.Line != w.line) {
			t.Errorf("%#x frame %d: %s:%d, addr2line %s:%d", addr, i, g.File, g.Line, w.file, w.line)
			ok = false
		}
		if g.Inlined != !outer {
			t.Errorf("%#x frame %d: Inlined=%v", addr, i, g.Inlined)
			ok = false
		}
	}
	return ok
}
