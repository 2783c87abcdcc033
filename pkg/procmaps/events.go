package procmaps

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
)

// Exec starts a process's mappings afresh for its new image.
func (t *Table) Exec(pid uint32, exe string, startCode uint64, exeKey string) {
	delete(t.procs, pid)
	if err := t.Load(pid); err == nil {
		return
	}
	// The process is already gone: place the executable from what the kernel told at exec.
	m := t.mods[exeKey]
	if m == nil && filepath.IsAbs(exe) {
		if f, err := os.Open(exe); err == nil {
			if fileKey(f) == exeKey {
				m, _ = openModule(exeKey, exe, "/", f)
			}
			if m == nil {
				f.Close()
			} else {
				t.mods[exeKey] = m
			}
		}
	}
	if m == nil {
		return
	}
	var minExec uint64 = ^uint64(0)
	for _, p := range m.loads {
		if p.Flags&elf.PF_X != 0 && p.Vaddr < minExec {
			minExec = p.Vaddr
		}
	}
	bias := startCode - minExec
	pr := t.proc(pid)
	for _, p := range m.loads {
		if p.Flags&elf.PF_X == 0 {
			continue
		}
		start := (bias + p.Vaddr) &^ 0xfff
		pr.add(mapping{start: start, end: bias + p.Vaddr + p.Memsz, pgoff: p.Off &^ 0xfff, mod: m})
	}
}

// Fork gives a child its parent's mappings.
func (t *Table) Fork(parent, child uint32) {
	pp := t.procs[parent]
	if pp == nil {
		return
	}
	c := &proc{maps: append([]mapping(nil), pp.maps...), loaded: pp.loaded}
	t.procs[child] = c
}

// Map records an executable file mapping the process made; the file is opened now, while it is reachable.
func (t *Table) Map(pid uint32, addr, length, pgoff uint64, dev uint32, ino uint64, name string) {
	key := KernelDevKey(dev, ino)
	m := t.mods[key]
	if m == nil {
		end := (addr + length + 0xfff) &^ 0xfff
		m = t.open(pid, key, t.pathOf(pid, addr, end, name), addr, end)
		if m == nil {
			// Reading all the mappings also finds it when the range was merged with a neighbour.
			_ = t.Load(pid)
			m = t.mods[key]
		}
	}
	if m != nil {
		t.proc(pid).add(mapping{start: addr, end: addr + length, pgoff: pgoff, mod: m})
	}
}

// pathOf returns the path of the file mapped at addr, or its bare name when the process is gone.
func (t *Table) pathOf(pid uint32, addr, end uint64, name string) string {
	link := fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, addr, end)
	if p, err := os.Readlink(link); err == nil {
		return p
	}
	return name
}

// Exit forgets a process's mappings; its stacks were already made file-relative.
func (t *Table) Exit(pid uint32) { delete(t.procs, pid) }
