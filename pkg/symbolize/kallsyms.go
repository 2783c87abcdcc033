package symbolize

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// moduleSpace is where x86-64 puts loadable modules and JIT-compiled BPF programs.
const moduleSpace = 0xffffffffa0000000

// KernelFrame is one kernel stack frame named from /proc/kallsyms.
type KernelFrame struct {
	Addr     uint64
	Function string // "" when no symbol covers the address (or kallsyms shows zeros: not root)
	Offset   uint64 // bytes from the function's start
	Module   string // "vmlinux", or the loadable module's name ([mod] in kallsyms)
}

// Symbol is the display text: module!function+0xoff, or the raw address.
func (f KernelFrame) Symbol() string {
	if f.Function == "" {
		return fmt.Sprintf("0x%x", f.Addr)
	}
	return fmt.Sprintf("%s!%s+0x%x", f.Module, f.Function, f.Offset)
}

type ksym struct {
	addr uint64
	name string
	mod  string
}

// Kallsyms names kernel text addresses. The table is parsed once (122,000 lines here, ~40 ms)
// and kept: each trace that sees kernel stacks shares it; a miss inside module space reloads
// it once, for a module loaded since.
type Kallsyms struct {
	mu     sync.Mutex
	path   string
	syms   []ksym
	loaded bool
	err    error
	// unknown are addresses a reload did not name either (a BPF program's, with its symbols
	// not exposed): they do not cost another 40 ms reload each time a stack shows them.
	unknown map[uint64]bool
}

var kernelSyms = &Kallsyms{path: "/proc/kallsyms"}

// KernelSymbols is the process-wide table of /proc/kallsyms.
func KernelSymbols() *Kallsyms { return kernelSyms }

// NewKallsyms reads a kallsyms-format file (tests give their own).
func NewKallsyms(path string) *Kallsyms { return &Kallsyms{path: path} }

func (k *Kallsyms) load() {
	f, err := os.Open(k.path)
	if err != nil {
		k.err = fmt.Errorf("reading kernel symbols: %w", err)
		return
	}
	defer f.Close()
	k.syms, k.err = parseKallsyms(f)
	k.loaded = true
}

// parseKallsyms keeps the text symbols (types t, T, w, W), sorted by address.
func parseKallsyms(r io.Reader) ([]ksym, error) {
	var out []ksym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		switch fields[1] {
		case "t", "T", "w", "W":
		default:
			continue
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || addr == 0 {
			continue
		}
		mod := "vmlinux"
		if len(fields) >= 4 {
			mod = strings.Trim(fields[3], "[]")
		}
		out = append(out, ksym{addr: addr, name: fields[2], mod: mod})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading kernel symbols: %w", err)
	}
	slices.SortStableFunc(out, func(a, b ksym) int {
		if a.addr < b.addr {
			return -1
		}
		if a.addr > b.addr {
			return 1
		}
		return 0
	})
	return out, nil
}

// Warm reads the table now (a trace starts it while its BPF programs load: the first kernel stack
// then does not wait ~40 ms for it).
func (k *Kallsyms) Warm() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.loaded {
		k.load()
	}
}

// Frames names a kernel stack's return addresses (innermost first): each is looked up at
// addr-1, inside the call it returns from.
func (k *Kallsyms) Frames(addrs []uint64) ([]KernelFrame, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.loaded {
		k.load()
	}
	if k.err != nil {
		return nil, k.err
	}
	out := make([]KernelFrame, len(addrs))
	reloaded := false
	for i, a := range addrs {
		f, ok := k.lookup(a)
		if !ok && !reloaded && a >= moduleSpace && !k.unknown[a] { // a module or BPF program loaded since
			reloaded = true
			k.load()
			if f, ok = k.lookup(a); !ok {
				if k.unknown == nil {
					k.unknown = map[uint64]bool{}
				}
				k.unknown[a] = true
			}
		}
		out[i] = f
	}
	return out, nil
}

func (k *Kallsyms) lookup(addr uint64) (KernelFrame, bool) {
	f := KernelFrame{Addr: addr, Module: "vmlinux"}
	at := addr - 1
	i, found := slices.BinarySearchFunc(k.syms, at, func(s ksym, a uint64) int {
		if s.addr < a {
			return -1
		}
		if s.addr > a {
			return 1
		}
		return 0
	})
	if !found {
		i--
	}
	if i < 0 {
		return f, false
	}
	for found && i+1 < len(k.syms) && k.syms[i+1].addr == at {
		i++ // of aliases, the last listed
	}
	s := k.syms[i]
	if addr >= moduleSpace && s.mod == "vmlinux" {
		return f, false // past the kernel's own text: a module or BPF program loaded since the table was read
	}
	f.Function, f.Offset, f.Module = s.name, addr-s.addr, s.mod
	return f, true
}
