// Package procmaps follows each traced process's executable mappings, keeps their files open,
// and turns raw user stacks into file-relative frames, so stacks resolve after processes exit.
package procmaps

import (
	"debug/elf"
	"fmt"
	"os"
	"sync"

	"github.com/udstrace/udstrace/pkg/symbolize"
	"github.com/udstrace/udstrace/pkg/unwind"
)

// Module is one mapped file, identified by device and inode and kept open for later symbolization.
type Module struct {
	Key     string // "major:minor:inode"
	Path    string // as the first process that mapped it saw it
	BuildID string
	Root    string // the mapping process's /proc/PID/root, for finding debug files in its mount namespace

	file  *os.File
	size  int64
	elf   *elf.File
	loads []elf.ProgHeader

	once  sync.Once
	cfi   *unwind.Table
	sym   *symbolize.Binary
	symMu sync.Mutex
}

func openModule(key, path, root string, f *os.File) (*Module, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	m := &Module{Key: key, Path: path, Root: root, file: f, size: st.Size(), elf: ef}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			m.loads = append(m.loads, p.ProgHeader)
		}
	}
	if b, err := symbolize.Open(f, m.size, symbolize.Options{Path: path, Root: root}); err == nil {
		m.sym = b
		m.BuildID = b.BuildID()
	}
	return m, nil
}

// vaddr converts a file offset to the ELF virtual address the unwind and symbol tables use.
func (m *Module) vaddr(off uint64) (uint64, bool) {
	for _, p := range m.loads {
		if off >= p.Off && off < p.Off+p.Filesz {
			return off - p.Off + p.Vaddr, true
		}
	}
	return 0, false
}

// CFI returns the module's unwind table, parsed on first use; nil when it has none.
func (m *Module) CFI() *unwind.Table {
	m.once.Do(func() {
		if t, err := unwind.ParseELF(m.elf); err == nil {
			m.cfi = t
		}
	})
	return m.cfi
}

// Symbolize resolves a file offset of this module to source frames, inlined first.
func (m *Module) Symbolize(off uint64) []symbolize.Frame {
	m.symMu.Lock()
	defer m.symMu.Unlock()
	if m.sym == nil {
		return nil
	}
	va, ok := m.vaddr(off)
	if !ok {
		return nil
	}
	return m.sym.Symbolize(va)
}

// HasSymbols reports whether any function names are known for this module.
func (m *Module) HasSymbols() bool { return m.sym != nil && m.sym.HasSymbols() }

func (m *Module) close() { m.file.Close() }
