package loader

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrNoAllocatorObject means no object the program loads defines malloc: nothing udstrace can probe.
var ErrNoAllocatorObject = errors.New("no object it loads exports malloc and free")

// Allocator names the object a process's malloc binds to and which allocator it is.
type Allocator struct {
	Name   string // glibc, musl, jemalloc, tcmalloc, mimalloc, or "unknown"
	Object string // the file, as the process's mappings name it
}

// allocatorMarks tell allocators apart by a symbol only that one exports; the first match names it.
var allocatorMarks = []struct{ sym, name string }{
	{"mallctl", "jemalloc"}, {"je_mallctl", "jemalloc"},
	{"tc_malloc", "tcmalloc"},
	{"mi_malloc", "mimalloc"},
	{"__libc_malloc", "glibc"},
}

// AllocatorOf reports whether the ELF file at path exports malloc and free (an object the
// dynamic linker can bind a program's malloc to) and, if so, which allocator it is.
func AllocatorOf(path string) (name string, ok bool) {
	f, err := openELF(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	defined := exportedFuncs(f.File)
	if !defined["malloc"] || !defined["free"] {
		return "", false
	}
	for _, m := range allocatorMarks {
		if defined[m.sym] {
			return m.name, true
		}
	}
	if defined["__libc_start_main"] {
		return "musl", true // a C library without glibc's exports: musl's libc.so (ld-musl is its alias)
	}
	return "unknown", true
}

// exportedFuncs is the set of functions an ELF file's dynamic symbol table defines.
func exportedFuncs(f *elf.File) map[string]bool {
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil
	}
	out := make(map[string]bool, len(syms))
	for _, s := range syms {
		t := elf.ST_TYPE(s.Info)
		if (t == elf.STT_FUNC || t == elf.STT_GNU_IFUNC) && s.Section != elf.SHN_UNDEF && s.Value != 0 {
			out[s.Name] = true
		}
	}
	return out
}

// ResolveAllocators lists the files a program will load that export malloc, in the order the
// dynamic linker searches them for a symbol: LD_PRELOAD (the last value in env), the executable,
// its PT_INTERP and libraries breadth first. The first is the object malloc binds to; the others
// still serve the functions it lacks (jemalloc has no reallocarray: glibc's is called), so all
// are probed. It fails as ResolveLibc does for programs without a shared allocator.
func ResolveAllocators(program string, env []string) ([]string, error) {
	libc, err := ResolveLibc(program)
	if errors.Is(err, ErrStatic) || errors.Is(err, ErrGoProgram) {
		return nil, err
	}
	var objs []string
	seen := map[string]bool{}
	add := func(path string) {
		real, err := filepath.EvalSymlinks(path)
		if err != nil || seen[real] {
			return
		}
		seen[real] = true
		if _, ok := AllocatorOf(real); ok {
			objs = append(objs, real)
		}
	}
	for _, p := range preloads(env) {
		add(p)
	}
	for _, p := range ResolveImage(program) {
		add(p)
	}
	if libc != "" {
		add(libc)
	}
	if len(objs) == 0 {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("inspecting %s: %w", program, ErrNoAllocatorObject)
	}
	return objs, nil
}

// preloads are the files LD_PRELOAD names (separated by spaces or colons), found as the loader
// finds them: a name with a slash as is, a bare name in the system directories.
func preloads(env []string) []string {
	val := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "LD_PRELOAD="); ok {
			val = v
		}
	}
	var out []string
	for _, n := range strings.FieldsFunc(val, func(r rune) bool { return r == ':' || r == ' ' }) {
		if strings.Contains(n, "/") {
			out = append(out, n)
			continue
		}
		for _, d := range libDirs {
			cand := filepath.Join(d, n)
			if st, err := os.Stat(cand); err == nil && st.Mode().IsRegular() {
				out = append(out, cand)
				break
			}
		}
	}
	return out
}

// InterpOf returns the PT_INTERP of an executable (its dynamic loader), "" if none.
func InterpOf(path string) string {
	f, err := openELF(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	return interpOf(f.File)
}

func interpOf(f *elf.File) string {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, min(p.Filesz, 4096))
		if _, err := p.ReadAt(b, 0); err == nil {
			return strings.TrimRight(string(b), "\x00")
		}
	}
	return ""
}

// Untraceable says why a program's allocations cannot be traced when no object it maps exports malloc.
func Untraceable(path string) string {
	f, err := openELF(path)
	if err != nil {
		return "no object it maps exports malloc"
	}
	defer f.Close()
	switch {
	case f.Section(".go.buildinfo") != nil:
		return "it is a Go program: Go allocates with its own allocator, not malloc (use Go's heap profiles)"
	case interpOf(f.File) == "":
		return "it is statically linked: its allocator is built into it and exports no malloc to probe"
	}
	return "no object it maps exports malloc and free (an allocator without exported symbols)"
}

// ReportedAs says under which kind each probed symbol a program calls is reported, for a lookup
// scope holding these allocator objects in search order (ResolveAllocators): a name binds to the
// first object that defines it, and names sharing an address there are one probe, reported
// under the first (glibc's aligned_alloc is its memalign, tcmalloc's operator delete its free;
// _ZdlPvm is "operator delete"). Names not listed report as themselves.
func ReportedAs(objs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, obj := range objs {
		probes, err := FindAllocator(obj)
		if err != nil {
			return nil, err
		}
		for _, p := range probes {
			for _, n := range p.Names {
				if _, bound := out[n]; !bound {
					out[n] = p.Kind.String()
				}
			}
		}
	}
	return out, nil
}
