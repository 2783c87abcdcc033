package loader

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/udstrace/udstrace/internal/safeopen"
)

// ErrStatic means the program has no dynamic libc whose allocator could be probed.
var ErrStatic = errors.New("statically linked: no shared libc to probe")

// ErrNoLibc means the program does not link a C library.
var ErrNoLibc = errors.New("does not link libc")

// ErrGoProgram means the program is written in Go: it allocates with Go's own allocator, not libc's malloc.
var ErrGoProgram = errors.New("is a Go program: Go allocates with its own allocator, not libc's malloc")

// IsGo reports whether an ELF file is a Go program (it has Go's build-info section).
func IsGo(path string) bool {
	f, err := openELF(path)
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
	f, err := openELF(program)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hasInterp := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			hasInterp = true
		}
	}
	needed := safeopen.DynStrings(f.File, elf.DT_NEEDED)
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
	dirs := searchDirs(f.File, program)
	for _, d := range dirs {
		cand := filepath.Join(d, libc)
		if sameClass(cand, f.Class, f.Machine) {
			return filepath.EvalSymlinks(cand)
		}
	}
	return "", fmt.Errorf("finding %s for %s: not in %s", libc, program, strings.Join(dirs, ":"))
}

func shebang(path string) (string, error) {
	// The kernel reads at most 256 bytes of a "#!" line (BINPRM_BUF_SIZE).
	head, err := safeopen.ReadHead(path, 256, safeopen.Options{Follow: true})
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	line, _, _ := strings.Cut(string(head), "\n")
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
	f, err := openELF(path)
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

// ResolveImage lists the files a program maps when it starts, the way the dynamic loader finds
// them: the program (a script's interpreter, followed), its PT_INTERP, and its DT_NEEDED
// libraries breadth first (RPATH/RUNPATH of each object, LD_LIBRARY_PATH, the system
// directories). Libraries that cannot be found are left out: the loader may still find them.
func ResolveImage(program string) []string {
	for depth := 0; depth < 4; depth++ {
		interp, err := shebang(program)
		if err != nil || interp == "" {
			break
		}
		program = interp
	}
	out := []string{program}
	seen := map[string]bool{}
	queue := []string{program}
	for len(queue) > 0 && len(out) < 256 {
		obj := queue[0]
		queue = queue[1:]
		f, err := openELF(obj)
		if err != nil {
			continue
		}
		if obj == program {
			for _, p := range f.Progs {
				if p.Type != elf.PT_INTERP {
					continue
				}
				b := make([]byte, min(p.Filesz, 4096))
				if _, err := p.ReadAt(b, 0); err == nil {
					out = append(out, strings.TrimRight(string(b), "\x00"))
				}
			}
		}
		needed := safeopen.DynStrings(f.File, elf.DT_NEEDED)
		dirs := searchDirs(f.File, obj)
		for _, n := range needed {
			if seen[n] {
				continue
			}
			seen[n] = true
			for _, d := range dirs {
				cand := filepath.Join(d, n)
				if sameClass(cand, f.Class, f.Machine) {
					if real, err := filepath.EvalSymlinks(cand); err == nil {
						out = append(out, real)
						queue = append(queue, real)
					}
					break
				}
			}
		}
		f.Close()
	}
	return out
}

// openELF opens an ELF file the traced side may control (a program, what it links, what a
// "#!" line names): never a FIFO or device, and parsed from its program headers when its
// section headers are broken, as the kernel runs it.
func openELF(path string) (*safeopen.ELF, error) {
	return safeopen.OpenELF(path, safeopen.Options{Follow: true})
}

// searchDirs are where the loader looks for obj's DT_NEEDED libraries.
func searchDirs(f *elf.File, obj string) []string {
	var dirs []string
	origin := filepath.Dir(obj)
	for _, tag := range []elf.DynTag{elf.DT_RPATH, elf.DT_RUNPATH} {
		for _, v := range safeopen.DynStrings(f, tag) {
			for _, d := range strings.Split(v, ":") {
				dirs = append(dirs, strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin))
			}
		}
	}
	if lp := os.Getenv("LD_LIBRARY_PATH"); lp != "" {
		dirs = append(dirs, strings.Split(lp, ":")...)
	}
	return append(dirs, libDirs...)
}
