package loader

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrStatic means the program has no dynamic libc whose allocator could be probed.
var ErrStatic = errors.New("statically linked: no shared libc to probe")

// ErrNoLibc means the program does not link a C library.
var ErrNoLibc = errors.New("does not link libc")

// ErrGoProgram means the program is written in Go: it allocates with Go's own allocator, not libc's malloc.
var ErrGoProgram = errors.New("is a Go program: Go allocates with its own allocator, not libc's malloc")

// IsGo reports whether an ELF file is a Go program (it has Go's build-info section).
func IsGo(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Section(".go.buildinfo") != nil
}

var libDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
}

// ResolveLibc finds the libc a program will map when it runs, the way the dynamic loader
// searches: RPATH/RUNPATH, LD_LIBRARY_PATH, then the system directories. Scripts are
// followed to their interpreter.
func ResolveLibc(program string) (string, error) {
	for depth := 0; depth < 4; depth++ {
		interp, err := shebang(program)
		if err != nil {
			return "", err
		}
		if interp == "" {
			break
		}
		program = interp
	}
	f, err := elf.Open(program)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", program, err)
	}
	defer f.Close()
	hasInterp := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			hasInterp = true
		}
	}
	needed, _ := f.ImportedLibraries()
	isGo := f.Section(".go.buildinfo") != nil
	if isGo && !hasLibc(needed) {
		return "", fmt.Errorf("inspecting %s: %w", program, ErrGoProgram)
	}
	if !hasInterp && len(needed) == 0 {
		return "", fmt.Errorf("inspecting %s: %w", program, ErrStatic)
	}
	libc := ""
	for _, n := range needed {
		if IsLibcName(n) {
			libc = n
		}
	}
	if libc == "" {
		return "", fmt.Errorf("inspecting %s: %w", program, ErrNoLibc)
	}
	var dirs []string
	origin := filepath.Dir(program)
	for _, tag := range []elf.DynTag{elf.DT_RPATH, elf.DT_RUNPATH} {
		vals, _ := f.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				dirs = append(dirs, strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin))
			}
		}
	}
	if lp := os.Getenv("LD_LIBRARY_PATH"); lp != "" {
		dirs = append(dirs, strings.Split(lp, ":")...)
	}
	dirs = append(dirs, libDirs...)
	for _, d := range dirs {
		cand := filepath.Join(d, libc)
		if sameClass(cand, f.Class, f.Machine) {
			return filepath.EvalSymlinks(cand)
		}
	}
	return "", fmt.Errorf("finding %s for %s: not in %s", libc, program, strings.Join(dirs, ":"))
}

func shebang(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	if !strings.HasPrefix(line, "#!") {
		return "", nil
	}
	fields := strings.Fields(line[2:])
	if len(fields) == 0 {
		return "", nil
	}
	return fields[0], nil
}

func sameClass(path string, class elf.Class, machine elf.Machine) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Class == class && f.Machine == machine
}

func hasLibc(needed []string) bool {
	for _, n := range needed {
		if IsLibcName(n) {
			return true
		}
	}
	return false
}

// IsLibcName reports whether a file name (or path) names a C library udstrace can probe.
func IsLibcName(name string) bool {
	base := filepath.Base(name)
	if rest, ok := strings.CutPrefix(base, "libc-"); ok { // libc-2.31.so, not libc-client.so
		return rest != "" && rest[0] >= '0' && rest[0] <= '9'
	}
	return strings.HasPrefix(base, "libc.so") || strings.HasPrefix(base, "libc.musl")
}
