package unwind

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// chainC is main→a→b→c→d→e; e captures its registers, 16 KiB of stack (less
// at the stack's end) and /proc/self/maps the way the BPF program would.
const chainC = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINL __attribute__((noinline, noclone))

static char stackbuf[16384];
static char mapsbuf[1 << 16];
static volatile int sink;

static void writefile(const char *dir, const char *name, const void *p, size_t n) {
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		perror(path);
		exit(2);
	}
}

static unsigned long stackend(const char *maps, unsigned long sp) {
	for (const char *l = maps; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : l) {
		unsigned long lo, hi;
		if (sscanf(l, "%lx-%lx", &lo, &hi) == 2 && sp >= lo && sp < hi)
			return hi;
	}
	return sp;
}

NOINL int e(const char *dir) {
	FILE *m = fopen("/proc/self/maps", "r");
	size_t mn = m ? fread(mapsbuf, 1, sizeof mapsbuf - 1, m) : 0;
	if (m)
		fclose(m);
	mapsbuf[mn] = 0;
	unsigned long rsp, rbp, rip;
	/* One asm so rsp and rip belong to the same instruction boundary. */
	__asm__ volatile("mov %%rsp, %0\n\tmov %%rbp, %1\n\tlea 0(%%rip), %2"
			 : "=r"(rsp), "=r"(rbp), "=r"(rip));
	unsigned long n = stackend(mapsbuf, rsp) - rsp;
	if (n > sizeof stackbuf)
		n = sizeof stackbuf;
	memcpy(stackbuf, (void *)rsp, n);
	char regs[128];
	int rn = snprintf(regs, sizeof regs, "%lx %lx %lx\n", rip, rsp, rbp);
	writefile(dir, "stack", stackbuf, n);
	writefile(dir, "maps", mapsbuf, mn);
	writefile(dir, "regs", regs, rn);
	exit(0);
}

/* Each caller uses its callee's result: no call is a tail call. */
NOINL int d(const char *dir) { int r = e(dir); sink = r; return r + 1; }
NOINL int c(const char *dir) { int r = d(dir); sink = r; return r + 2; }
NOINL int b(const char *dir) { int r = c(dir); sink = r; return r + 3; }
NOINL int a(const char *dir) { int r = b(dir); sink = r; return r + 4; }

int main(int argc, char **argv) {
	int r = a(argc > 1 ? argv[1] : ".");
	sink = r;
	return r;
}
`

// mapping is one file-backed line of /proc/PID/maps.
type mapping struct {
	start, end, off uint64
	path            string
}

func parseMaps(data []byte) []mapping {
	var ms []mapping
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		var m mapping
		m.start, _ = strconv.ParseUint(lo, 16, 64)
		m.end, _ = strconv.ParseUint(hi, 16, 64)
		m.off, _ = strconv.ParseUint(f[2], 16, 64)
		m.path = f[5]
		ms = append(ms, m)
	}
	return ms
}

// module is one mapped ELF file with its CFI and the bias of its mapping.
type module struct {
	mapping
	f    *elf.File
	tab  *Table
	bias uint64
}

// mapsResolver builds the Resolver udstrace would: PC → file mapped there,
// bias from the mapping's start and file offset via the file's PT_LOADs.
func mapsResolver(t *testing.T, maps []byte) (Resolver, func(pc uint64) *module) {
	t.Helper()
	files := map[string]*module{}
	var mods []*module
	for _, m := range parseMaps(maps) {
		base := files[m.path]
		if base == nil {
			f, err := elf.Open(m.path)
			if err != nil {
				continue
			}
			t.Cleanup(func() { f.Close() })
			tab, err := ParseELF(f)
			if err != nil {
				t.Logf("ParseELF(%s): %v", m.path, err)
			}
			base = &module{f: f, tab: tab}
			files[m.path] = base
		}
		bias, ok := LoadBias(base.f, m.start, m.off)
		if !ok {
			continue
		}
		mods = append(mods, &module{mapping: m, f: base.f, tab: base.tab, bias: bias})
	}
	find := func(pc uint64) *module {
		for _, m := range mods {
			if pc >= m.start && pc < m.end {
				return m
			}
		}
		return nil
	}
	res := func(pc uint64) (*Table, uint64, bool) {
		if m := find(pc); m != nil && m.tab != nil {
			return m.tab, m.bias, true
		}
		return nil, 0, false
	}
	return res, find
}

// funcSymbols lists f's functions from .symtab, the build-id debug file's
// .symtab and .dynsym, best source first.
func funcSymbols(f *elf.File) []elf.Symbol {
	var all []elf.Symbol
	add := func(syms []elf.Symbol, err error) {
		for _, s := range syms {
			if err == nil && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
				all = append(all, s)
			}
		}
	}
	add(f.Symbols())
	if dbg := buildIDDebugFile(f); dbg != nil {
		add(dbg.Symbols())
		dbg.Close()
	}
	add(f.DynamicSymbols())
	return all
}

func covers(s elf.Symbol, vaddr uint64) bool {
	return s.Value <= vaddr && vaddr < s.Value+max(s.Size, 1)
}

// symbolName names the function holding vaddr.
func symbolName(syms []elf.Symbol, vaddr uint64) string {
	for _, s := range syms {
		if covers(s, vaddr) {
			return s.Name
		}
	}
	return "??"
}

// sameFunction reports whether the symbol called name (any alias) holds vaddr.
func sameFunction(syms []elf.Symbol, name string, vaddr uint64) bool {
	for _, s := range syms {
		if s.Name == name && covers(s, vaddr) {
			return true
		}
	}
	return false
}

func buildIDDebugFile(f *elf.File) *elf.File {
	s := f.Section(".note.gnu.build-id")
	if s == nil {
		return nil
	}
	d, err := s.Data()
	if err != nil || len(d) < 16 {
		return nil
	}
	id := hex.EncodeToString(d[16:])
	dbg, err := elf.Open(filepath.Join("/usr/lib/debug/.build-id", id[:2], id[2:]+".debug"))
	if err != nil {
		return nil
	}
	return dbg
}

// gdbBacktrace is the second oracle: gdb's frame names at a breakpoint on e.
func gdbBacktrace(t *testing.T, exe, dir string) []string {
	gdb, err := exec.LookPath("gdb")
	if err != nil || testing.Short() {
		return nil
	}
	out, err := exec.Command(gdb, "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex", "set backtrace past-main on",
		"-ex", "break e", "-ex", "run", "-ex", "bt", "--args", exe, dir).CombinedOutput()
	if err != nil {
		t.Logf("gdb: %v", err)
		return nil
	}
	re := regexp.MustCompile(`(?m)^#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][A-Za-z0-9_.]*)`)
	var names []string
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		names = append(names, m[1])
	}
	return names
}

func TestUnwindCompiledChain(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
	t.Run("cfi", func(t *testing.T) { testChain(t, "-fomit-frame-pointer") })
	// Without unwind tables the program's own frames take the FP fallback.
	t.Run("framepointers", func(t *testing.T) {
		testChain(t, "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables")
	})
}

func testChain(t *testing.T, cflags ...string) {
	dir := t.TempDir()
	src, exe := filepath.Join(dir, "chain.c"), filepath.Join(dir, "chain")
	if err := os.WriteFile(src, []byte(chainC), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", append(append([]string{"-O2", "-g"}, cflags...), "-o", exe, src)...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	if out, err := exec.Command(exe, dir).CombinedOutput(); err != nil {
		t.Fatalf("running chain: %v\n%s", err, out)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var regs Regs
	if _, err := fmt.Sscanf(string(read("regs")), "%x %x %x", &regs.IP, &regs.SP, &regs.FP); err != nil {
		t.Fatalf("parsing regs: %v", err)
	}
	stack := read("stack")
	resolve, find := mapsResolver(t, read("maps"))

	pcs := Unwind(regs, stack, resolve, MaxFrames)
	symCache := map[*elf.File][]elf.Symbol{}
	var names []string
	var syms [][]elf.Symbol // per frame, for alias-aware comparison with gdb
	var vaddrs []uint64
	for i, pc := range pcs {
		m := find(pc)
		if m == nil {
			names, syms, vaddrs = append(names, "??"), append(syms, nil), append(vaddrs, 0)
			continue
		}
		look := pc - m.bias
		if i > 0 {
			look-- // a return address: name the call
		}
		if symCache[m.f] == nil {
			symCache[m.f] = funcSymbols(m.f)
		}
		names = append(names, symbolName(symCache[m.f], look))
		syms, vaddrs = append(syms, symCache[m.f]), append(vaddrs, look)
		t.Logf("#%d %#x %s in %s", i, pc, names[i], filepath.Base(m.path))
	}
	want := []string{"e", "d", "c", "b", "a", "main"}
	if len(names) < len(want)+1 {
		t.Fatalf("unwound %v, want %v then libc start-up", names, want)
	}
	for i, w := range want {
		if names[i] != w {
			t.Errorf("frame %d = %s, want %s (all: %v)", i, names[i], w, names)
		}
	}
	if m := find(pcs[len(want)]); m == nil || !strings.Contains(filepath.Base(m.path), "libc") {
		t.Errorf("frame %d is not in libc: %v", len(want), names)
	}
	startup := strings.Join(names[len(want):], " ")
	if !strings.Contains(startup, "__libc_start_call_main") && !sameFunction(syms[len(want)], "__libc_start_main", vaddrs[len(want)]) &&
		!(len(names) > len(want)+1 && sameFunction(syms[len(want)+1], "__libc_start_main", vaddrs[len(want)+1])) {
		t.Errorf("frames after main = %s, want libc start-up", startup)
	}
	// gdb, stopped at e's entry rather than at the capture point, must
	// agree on every function name.
	if gdbNames := gdbBacktrace(t, exe, dir); gdbNames != nil {
		t.Logf("gdb: %v", gdbNames)
		for i := 0; i < len(gdbNames) && i < len(names); i++ {
			if gdbNames[i] != names[i] && !sameFunction(syms[i], gdbNames[i], vaddrs[i]) {
				t.Errorf("frame %d: gdb %s, unwind %s", i, gdbNames[i], names[i])
			}
		}
		if len(gdbNames) != len(names) {
			t.Errorf("gdb has %d frames %v, unwind %d %v", len(gdbNames), gdbNames, len(names), names)
		}
	}
}
