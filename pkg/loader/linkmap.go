package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// LinkMap lists the objects of a running process's link map in order (the main program first,
// as ""): the order its dynamic linker searches for a symbol at startup, LD_PRELOAD objects
// included. It reads the loader's r_debug through the executable's DT_DEBUG from
// /proc/PID/mem, so it needs the right to ptrace-read the process (root).
func LinkMap(pid int) ([]string, error) {
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	f, err := openELF(exe)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return nil, errors.New("reading the link map: not a 64-bit program")
	}
	var phdr, dyn uint64
	hasPhdr := false
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_PHDR:
			phdr, hasPhdr = p.Vaddr, true
		case elf.PT_DYNAMIC:
			dyn = p.Vaddr
		}
	}
	if dyn == 0 || !hasPhdr {
		return nil, errors.New("reading the link map: no dynamic section")
	}
	atPhdr, err := auxv(pid, 3) // AT_PHDR: where the program headers are mapped
	if err != nil {
		return nil, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Errorf("reading the link map: %w", err)
	}
	defer mem.Close()
	bias := atPhdr - phdr
	word := func(addr uint64) (uint64, error) {
		var b [8]byte
		if _, err := mem.ReadAt(b[:], int64(addr)); err != nil {
			return 0, fmt.Errorf("reading the link map at %#x: %w", addr, err)
		}
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	var rdebug uint64
	for a := bias + dyn; ; a += 16 {
		tag, err := word(a)
		if err != nil {
			return nil, err
		}
		if tag == uint64(elf.DT_NULL) {
			break
		}
		if tag == uint64(elf.DT_DEBUG) {
			if rdebug, err = word(a + 8); err != nil {
				return nil, err
			}
			break
		}
	}
	if rdebug == 0 {
		return nil, errors.New("reading the link map: the dynamic linker has not set DT_DEBUG")
	}
	lm, err := word(rdebug + 8) // r_debug.r_map
	if err != nil {
		return nil, err
	}
	var out []string
	for n := 0; lm != 0 && n < 4096; n++ {
		namep, err := word(lm + 8) // link_map.l_name
		if err != nil {
			return nil, err
		}
		name := ""
		if namep != 0 {
			b := make([]byte, 4096)
			k, _ := mem.ReadAt(b, int64(namep))
			if i := bytes.IndexByte(b[:k], 0); i >= 0 {
				name = string(b[:i])
			}
		}
		out = append(out, name)
		if lm, err = word(lm + 24); err != nil { // link_map.l_next
			return nil, err
		}
	}
	return out, nil
}

// auxv returns one entry of a process's auxiliary vector.
func auxv(pid int, typ uint64) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/auxv", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the auxiliary vector: %w", err)
	}
	for i := 0; i+16 <= len(b); i += 16 {
		if binary.LittleEndian.Uint64(b[i:]) == typ {
			return binary.LittleEndian.Uint64(b[i+8:]), nil
		}
	}
	return 0, fmt.Errorf("reading the auxiliary vector: no entry %d", typ)
}
