package loader

import (
	"debug/elf"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/udstrace/udstrace/internal/safeopen"
	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/probeplace"
	"golang.org/x/arch/x86/x86asm"
)

// allocatorNames lists the probed functions; when several share an address
// (glibc: memalign = aligned_alloc; tcmalloc: free = operator delete), the first listed names
// the probe: the C names first. Then the allocators' own entry points, which bypass malloc.
var allocatorNames = []string{
	"malloc", "calloc", "realloc", "reallocarray", "posix_memalign",
	"memalign", "aligned_alloc", "valloc", "pvalloc", "free",
	"mallocx", "rallocx", "xallocx", "dallocx", "sdallocx",
	"mi_zalloc", "mi_mallocn", "mi_reallocn", "mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned",
}

// cxxOperators are the C++ operators an allocator may define itself (jemalloc, tcmalloc and
// mimalloc do; libstdc++'s call malloc and are not probed): plain, sized, aligned and nothrow
// forms of each, by mangled name, plain forms first (tcmalloc's new[] is its new).
var cxxOperators = []struct {
	name string
	kind event.Kind
}{
	{"_Znwm", event.OperatorNew}, {"_ZnwmRKSt9nothrow_t", event.OperatorNew},
	{"_ZnwmSt11align_val_t", event.OperatorNew}, {"_ZnwmSt11align_val_tRKSt9nothrow_t", event.OperatorNew},
	{"_Znam", event.OperatorNewArray}, {"_ZnamRKSt9nothrow_t", event.OperatorNewArray},
	{"_ZnamSt11align_val_t", event.OperatorNewArray}, {"_ZnamSt11align_val_tRKSt9nothrow_t", event.OperatorNewArray},
	{"_ZdlPv", event.OperatorDelete}, {"_ZdlPvm", event.OperatorDelete}, {"_ZdlPvRKSt9nothrow_t", event.OperatorDelete},
	{"_ZdlPvSt11align_val_t", event.OperatorDelete}, {"_ZdlPvmSt11align_val_t", event.OperatorDelete},
	{"_ZdlPvSt11align_val_tRKSt9nothrow_t", event.OperatorDelete},
	{"_ZdaPv", event.OperatorDeleteArray}, {"_ZdaPvm", event.OperatorDeleteArray}, {"_ZdaPvRKSt9nothrow_t", event.OperatorDeleteArray},
	{"_ZdaPvSt11align_val_t", event.OperatorDeleteArray}, {"_ZdaPvmSt11align_val_t", event.OperatorDeleteArray},
	{"_ZdaPvSt11align_val_tRKSt9nothrow_t", event.OperatorDeleteArray},
}

// probedNames is every probed symbol in naming order: allocatorNames, then the operators.
func probedNames() []string {
	names := append([]string(nil), allocatorNames...)
	for _, op := range cxxOperators {
		names = append(names, op.name)
	}
	return names
}

// kindOf is the kind a probed symbol reports as.
func kindOf(name string) event.Kind {
	for _, op := range cxxOperators {
		if op.name == name {
			return op.kind
		}
	}
	k, _ := event.KindByName(name)
	return k
}

// Probe is one allocator function in a libc file.
type Probe struct {
	Kind    event.Kind
	Names   []string // every probed name at this address
	Offset  uint64   // file offset of the probe: the function start plus Skip
	Address uint64   // the function's ELF virtual address
	Skip    uint64   // bytes past the start where the kernel emulates instead of single-stepping
	Why     string   // why the probe sits at Skip
}

// argRegs are the registers each probe reads at entry; a probe may move past instructions that leave them intact.
var argRegs = map[string][]x86asm.Reg{
	"malloc": {x86asm.RDI}, "calloc": {x86asm.RDI, x86asm.RSI}, "realloc": {x86asm.RDI, x86asm.RSI},
	"reallocarray": {x86asm.RDI, x86asm.RSI, x86asm.RDX}, "posix_memalign": {x86asm.RDI, x86asm.RSI, x86asm.RDX},
	"memalign": {x86asm.RDI, x86asm.RSI}, "aligned_alloc": {x86asm.RDI, x86asm.RSI},
	"valloc": {x86asm.RDI}, "pvalloc": {x86asm.RDI}, "free": {x86asm.RDI},
}

// errNoAllocator means the file exports no malloc: not a libc udstrace can trace.
var errNoAllocator = errors.New("no malloc symbol")

// FindAllocator reads the dynamic symbols of a libc and returns one probe per distinct function address.
func FindAllocator(path string) ([]Probe, error) { return findAllocator(path, "", false) }

// FindNamedAllocator is FindAllocator for an object the user names (--allocator): its functions
// are prefix+name (jemalloc built with --with-jemalloc-prefix=je_: je_malloc), and looked for in
// its symbol table too when it exports none (a static binary that is not stripped). Those
// probes stay at their functions' starts: slower, never wrong.
func FindNamedAllocator(path, prefix string) ([]Probe, error) {
	return findAllocator(path, prefix, true)
}

func findAllocator(path, prefix string, symtab bool) ([]Probe, error) {
	ef, err := openELF(path)
	if err != nil {
		return nil, err
	}
	defer ef.Close()
	f := ef.File
	syms, err := f.DynamicSymbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("reading dynamic symbols of %s: %w", path, err)
	}
	addrOf := map[string]uint64{}
	add := func(syms []elf.Symbol) {
		for _, s := range syms {
			t := elf.ST_TYPE(s.Info)
			if t != elf.STT_FUNC && t != elf.STT_GNU_IFUNC || s.Value == 0 || s.Section == elf.SHN_UNDEF {
				continue
			}
			name, ok := strings.CutPrefix(s.Name, prefix)
			if !ok {
				continue
			}
			// Versioned duplicates (malloc@@GLIBC_2.2.5) share the default's address; keep the first.
			if _, seen := addrOf[name]; !seen {
				addrOf[name] = s.Value
			}
		}
	}
	add(syms)
	named := prefix != ""
	if _, ok := addrOf["malloc"]; !ok && symtab {
		if st, err := f.Symbols(); err == nil {
			add(st)
			named = true
		}
	}
	if _, ok := addrOf["malloc"]; !ok {
		return nil, fmt.Errorf("reading %s: %w", path, errNoAllocator)
	}
	var places map[string]probeplace.Placement
	if !named {
		places = placements(f)
	}
	byAddr := map[uint64]*Probe{}
	var probes []*Probe
	for _, name := range probedNames() {
		addr, ok := addrOf[name]
		if !ok {
			continue
		}
		if p := byAddr[addr]; p != nil {
			p.Names = append(p.Names, name)
			continue
		}
		kind := kindOf(name)
		off, err := fileOffset(f, addr)
		if err != nil {
			return nil, fmt.Errorf("locating %s in %s: %w", name, path, err)
		}
		p := &Probe{Kind: kind, Names: []string{name}, Offset: off, Address: addr}
		if pl, ok := places[name]; ok {
			p.Skip, p.Why = pl.Offset, pl.Reason
			p.Offset += pl.Offset
		}
		byAddr[addr] = p
		probes = append(probes, p)
	}
	out := make([]Probe, len(probes))
	for i, p := range probes {
		out[i] = *p
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out, nil
}

// fileOffset converts a virtual address to the file offset uprobes are placed at.
func fileOffset(f *elf.File, addr uint64) (uint64, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x is in no executable segment", addr)
}

// placements moves probes to instructions the kernel emulates (x86-64 only): a single-stepped
// probe costs ~10 µs, an emulated one ~1 µs. The return probe shares the spot: nothing before
// it writes the stack pointer, so the return address is still at [rsp].
func placements(f *elf.File) map[string]probeplace.Placement {
	if f.Machine != elf.EM_X86_64 {
		return nil
	}
	specs := map[string]probeplace.Spec{}
	for name, regs := range argRegs {
		specs[name] = probeplace.Spec{ArgRegs: regs}
	}
	out, err := probeplace.ForFile(f, specs)
	if err != nil {
		return nil // every probe stays at its function's start: slower, never wrong
	}
	return out
}

// Ahead is a libc's allocator probes looked for in the background, while the BPF programs load:
// placing them decodes libc's code (~80 ms, a fifth of run -- true's start), and the other core
// is idle then.
type Ahead struct {
	done   chan struct{}
	key    string // the file's identity (FileKey) the probes were found in
	probes []Probe
	err    error
}

// FindAllocatorAhead starts FindAllocator on the file at path, read through one descriptor so
// that the probes are those of the file whose identity they carry.
func FindAllocatorAhead(path string) *Ahead {
	a := &Ahead{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		f, err := safeopen.Open(path, safeopen.Options{Follow: true})
		if err != nil {
			a.err = err
			return
		}
		defer f.Close()
		fdPath := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
		if a.key, a.err = FileKey(fdPath); a.err == nil {
			a.probes, a.err = FindAllocator(fdPath)
		}
	}()
	return a
}

// UseAhead gives the tracer probes found ahead; AttachLibc takes them for the same file.
func (t *Tracer) UseAhead(a *Ahead) { t.ahead = a }

// aheadFor returns the probes found ahead for the file of identity key, nil for another file.
func (t *Tracer) aheadFor(key string) []Probe {
	a := t.ahead
	if a == nil {
		return nil
	}
	<-a.done
	if a.err != nil || a.key != key {
		return nil
	}
	t.ahead = nil
	return a.probes
}
