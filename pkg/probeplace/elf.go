package probeplace

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// maxCode caps how much of one function is read; Choose needs only Window bytes.
const maxCode = 1 << 16

// ForFile computes placements for named functions of an ELF file (dynamic or
// static symbols), scanning the file's executable sections once for direct
// branch targets. Names without a defined STT_FUNC symbol are absent from the
// result.
func ForFile(f *elf.File, funcs map[string]Spec) (map[string]Placement, error) {
	out, _, err := forFile(f, funcs)
	return out, err
}

// forFile is ForFile that also returns the branch targets each function was judged with.
func forFile(f *elf.File, funcs map[string]Spec) (map[string]Placement, map[string]map[uint64]bool, error) {
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return nil, nil, fmt.Errorf("choosing probe offsets: unsupported ELF %v %v", f.Class, f.Machine)
	}
	found, starts, err := functions(f, funcs)
	if err != nil {
		return nil, nil, err
	}
	var targets map[uint64]bool
	if f.Type == elf.ET_EXEC || f.Type == elf.ET_DYN {
		// Only linked files have final branch displacements; elsewhere targets stay unknown (nil).
		watched := make(map[uint64]bool)
		for _, s := range found {
			for off := uint64(1); off <= Window; off++ {
				watched[s.Value+off] = true
			}
		}
		if targets, err = scanTargets(f, watched, starts); err != nil {
			return nil, nil, err
		}
	}
	out := make(map[string]Placement, len(found))
	judged := make(map[string]map[uint64]bool, len(found))
	for name, s := range found {
		code, err := readCode(f, s)
		if err != nil {
			return nil, nil, fmt.Errorf("reading code of %s: %w", name, err)
		}
		var rel map[uint64]bool
		if targets != nil {
			rel = make(map[uint64]bool)
			for off := uint64(1); off <= Window; off++ {
				if targets[s.Value+off] {
					rel[off] = true
				}
			}
		}
		out[name] = Choose(code, funcs[name], rel)
		judged[name] = rel
	}
	return out, judged, nil
}

// functions finds the wanted function symbols and every function start (for
// resynchronising the linear sweep).
func functions(f *elf.File, funcs map[string]Spec) (map[string]elf.Symbol, []uint64, error) {
	var all []elf.Symbol
	for _, load := range []func() ([]elf.Symbol, error){f.DynamicSymbols, f.Symbols} {
		syms, err := load()
		if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
			return nil, nil, fmt.Errorf("reading symbols: %w", err)
		}
		all = append(all, syms...)
	}
	found := make(map[string]elf.Symbol)
	seen := make(map[uint64]bool)
	var starts []uint64
	for _, s := range all {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Section == elf.SHN_UNDEF || s.Section >= elf.SHN_LORESERVE || s.Value == 0 {
			continue
		}
		if !seen[s.Value] {
			seen[s.Value] = true
			starts = append(starts, s.Value)
		}
		name, _, _ := strings.Cut(s.Name, "@")
		if _, want := funcs[name]; !want {
			continue
		}
		// Prefer the default (non-hidden) version, which is what callers bind to.
		if old, ok := found[name]; ok && !(old.HasVersion && old.VersionIndex.IsHidden()) {
			continue
		}
		found[name] = s
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	return found, starts, nil
}

// readCode returns the function's bytes, bounded by its size and its section.
func readCode(f *elf.File, s elf.Symbol) ([]byte, error) {
	for _, sec := range f.Sections {
		if sec.Type == elf.SHT_NOBITS || s.Value < sec.Addr || s.Value >= sec.Addr+sec.Size {
			continue
		}
		n := s.Size
		if n == 0 || n > maxCode {
			n = 64
		}
		n = min(n, sec.Addr+sec.Size-s.Value)
		buf := make([]byte, n)
		if _, err := sec.ReadAt(buf, int64(s.Value-sec.Addr)); err != nil {
			return nil, fmt.Errorf("reading section %s: %w", sec.Name, err)
		}
		return buf, nil
	}
	return nil, fmt.Errorf("finding section for address %#x: none", s.Value)
}

// scanTargets returns the direct-branch targets, among the watched absolute
// addresses, found in the file's executable sections.
func scanTargets(f *elf.File, watched map[uint64]bool, starts []uint64) (map[uint64]bool, error) {
	targets := make(map[uint64]bool)
	for _, sec := range f.Sections {
		if sec.Type != elf.SHT_PROGBITS || sec.Flags&elf.SHF_EXECINSTR == 0 {
			continue
		}
		data, err := sec.Data()
		if err != nil {
			return nil, fmt.Errorf("reading section %s: %w", sec.Name, err)
		}
		sweep(data, sec.Addr, starts, watched, targets)
		rel32Patterns(data, sec.Addr, watched, targets)
	}
	return targets, nil
}

// sweep disassembles linearly, restarting at every known function start so
// that padding or data cannot desynchronise more than one function.
func sweep(data []byte, base uint64, starts []uint64, watched, targets map[uint64]bool) {
	bounds := []uint64{0}
	for _, s := range starts {
		if s > base && s < base+uint64(len(data)) {
			bounds = append(bounds, s-base)
		}
	}
	bounds = append(bounds, uint64(len(data)))
	for k := 0; k+1 < len(bounds); k++ {
		for i := bounds[k]; i < bounds[k+1]; {
			in, err := x86asm.Decode(data[i:], 64)
			if err != nil || in.Len <= 0 {
				i++
				continue
			}
			if rel, ok := in.Args[0].(x86asm.Rel); ok && in.PCRel > 0 {
				if t := base + i + uint64(in.Len) + uint64(int64(rel)); watched[t] {
					targets[t] = true
				}
			}
			i += uint64(in.Len)
		}
	}
}

// rel32Patterns over-approximates: any byte pattern that would decode as a
// rel32 call/jmp/jcc into a watched address counts, so a desynchronised sweep
// cannot hide a real one (a false hit only costs a slower probe).
func rel32Patterns(data []byte, base uint64, watched, targets map[uint64]bool) {
	for i := 0; i+5 <= len(data); i++ {
		var next int
		switch {
		case data[i] == 0xe8 || data[i] == 0xe9:
			next = i + 5
		case data[i] == 0x0f && i+6 <= len(data) && data[i+1] >= 0x80 && data[i+1] <= 0x8f:
			next = i + 6
		default:
			continue
		}
		rel := int32(binary.LittleEndian.Uint32(data[next-4 : next]))
		if t := base + uint64(next) + uint64(int64(rel)); watched[t] {
			targets[t] = true
		}
	}
}
