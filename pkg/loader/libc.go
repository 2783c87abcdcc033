package loader

import (
	"debug/elf"
	"errors"
	"fmt"
	"sort"

	"github.com/udstrace/udstrace/pkg/event"
)

// allocatorNames lists the probed functions; when several share an address
// (glibc: memalign = aligned_alloc), the first listed names the probe.
var allocatorNames = []string{
	"malloc", "calloc", "realloc", "reallocarray", "posix_memalign",
	"memalign", "aligned_alloc", "valloc", "pvalloc", "free",
}

// Probe is one allocator function in a libc file.
type Probe struct {
	Kind    event.Kind
	Names   []string // every probed name at this address
	Offset  uint64   // file offset of the function's first instruction
	Address uint64   // its ELF virtual address
}

// errNoAllocator means the file exports no malloc: not a libc udstrace can trace.
var errNoAllocator = errors.New("no malloc symbol")

// FindAllocator reads the dynamic symbols of a libc and returns one probe per distinct function address.
func FindAllocator(path string) ([]Probe, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, fmt.Errorf("reading dynamic symbols of %s: %w", path, err)
	}
	addrOf := map[string]uint64{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value == 0 || s.Section == elf.SHN_UNDEF {
			continue
		}
		// Versioned duplicates (malloc@@GLIBC_2.2.5) share the default's address; keep the first.
		if _, seen := addrOf[s.Name]; !seen {
			addrOf[s.Name] = s.Value
		}
	}
	if _, ok := addrOf["malloc"]; !ok {
		return nil, fmt.Errorf("reading %s: %w", path, errNoAllocator)
	}
	byAddr := map[uint64]*Probe{}
	var probes []*Probe
	for _, name := range allocatorNames {
		addr, ok := addrOf[name]
		if !ok {
			continue
		}
		if p := byAddr[addr]; p != nil {
			p.Names = append(p.Names, name)
			continue
		}
		kind, _ := event.KindByName(name)
		off, err := fileOffset(f, addr)
		if err != nil {
			return nil, fmt.Errorf("locating %s in %s: %w", name, path, err)
		}
		p := &Probe{Kind: kind, Names: []string{name}, Offset: off, Address: addr}
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
