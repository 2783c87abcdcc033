// Package procmaps follows each traced process's executable mappings, keeps their files open,
// and turns raw user stacks into file-relative frames, so stacks resolve after processes exit.
package procmaps

import (
	"debug/elf"
	"fmt"
	"os"
	"sync"

	"github.com/udstrace/udstrace/internal/safeopen"
	"github.com/udstrace/udstrace/pkg/ktable"
	"github.com/udstrace/udstrace/pkg/symbolize"
	"github.com/udstrace/udstrace/pkg/unwind"
)

// Module is one mapped file, identified by device and inode and kept open for later symbolization.
type Module struct {
	Key     string // "major:minor:inode"
	Path    string // as the first process that mapped it saw it
	BuildID string
	Root    string // the mapping process's /proc/PID/root, for finding debug files in its mount namespace
	ID      uint32 // module id in kernel stacks (pkg/kstack); 0 until registered
	// Lost says what of the file could not be parsed (broken section headers: loads and CFI come
	// from the program headers, symbols may be missing); nil when it parsed whole.
	Lost error

	file  *os.File
	size  int64
	elf   *elf.File
	loads []elf.ProgHeader

	srcOnce sync.Once
	src     *unwind.Source
	pagesMu sync.Mutex
	pages   map[uint32]*page // CFI by file page, compiled on first use
	sym     *symbolize.Binary
	symMu   sync.Mutex
}

func (t *Table) openModule(key, path, root string, f *os.File) (*Module, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	ef, lost, err := safeopen.NewELF(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	m := &Module{Key: key, Path: path, Root: root, file: f, size: st.Size(), elf: ef, Lost: lost}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD {
			m.loads = append(m.loads, p.ProgHeader)
		}
	}
	if b, err := symbolize.Open(f, m.size, symbolize.Options{Path: path, Root: root, Debuginfod: t.Debuginfod}); err == nil {
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

// Segments are the module's executable PT_LOADs, for the kernel's unwind rows.
func (m *Module) Segments() []ktable.Segment {
	var out []ktable.Segment
	for _, p := range m.loads {
		if p.Flags&elf.PF_X != 0 {
			out = append(out, ktable.Segment{Vaddr: p.Vaddr, Off: p.Off, Filesz: p.Filesz})
		}
	}
	return out
}

// DevIno is the module's identity as the kernel encodes it (major << 20 | minor, inode).
func (m *Module) DevIno() (dev uint32, ino uint64, ok bool) {
	var maj, mnr uint32
	if _, err := fmt.Sscanf(m.Key, "%d:%d:%d", &maj, &mnr, &ino); err != nil {
		return 0, 0, false
	}
	return maj<<20 | mnr, ino, true
}

// HasCFI reports whether the file has call-frame information (.eh_frame, .debug_frame, or a
// PT_GNU_EH_FRAME segment), from its headers alone.
func (m *Module) HasCFI() bool {
	if m.elf == nil {
		return false
	}
	for _, name := range []string{".eh_frame", ".debug_frame"} {
		if s := m.elf.Section(name); s != nil && s.Type != elf.SHT_NOBITS && s.Size > 0 {
			return true
		}
	}
	for _, p := range m.elf.Progs {
		if p.Type == elf.PT_GNU_EH_FRAME {
			return true
		}
	}
	return false
}

// Source indexes the module's CFI on first use; nil when it has none.
func (m *Module) Source() *unwind.Source {
	m.srcOnce.Do(func() {
		if m.elf == nil {
			return
		}
		if s, err := unwind.NewSourceELF(m.elf); err == nil && s.FDEs() > 0 {
			m.src = s
		}
	})
	return m.src
}

// PageTable is the CFI covering file page pg (offsets pg<<12 to (pg+1)<<12), compiled on first
// use and kept: the kernel's rows and user-space unwinding of copied stacks both come from it.
func (m *Module) PageTable(pg uint32) *unwind.Table {
	src := m.Source()
	if src == nil {
		return nil
	}
	m.pagesMu.Lock()
	p, ok := m.pages[pg]
	if !ok {
		if m.pages == nil {
			m.pages = map[uint32]*page{}
		}
		p = &page{}
		m.pages[pg] = p
	}
	m.pagesMu.Unlock()
	p.once.Do(func() { p.t = m.compilePage(src, pg) })
	return p.t
}

// page is one page's CFI, compiled once whoever asks first.
type page struct {
	once sync.Once
	t    *unwind.Table
}

func (m *Module) compilePage(src *unwind.Source, pg uint32) *unwind.Table {
	lo, hi := uint64(pg)<<ktable.PageShift, uint64(pg+1)<<ktable.PageShift
	vlo, vhi := ^uint64(0), uint64(0)
	for _, p := range m.loads {
		if p.Flags&elf.PF_X == 0 || p.Off >= hi || p.Off+p.Filesz <= lo {
			continue
		}
		a, b := max(lo, p.Off), min(hi, p.Off+p.Filesz)
		vlo, vhi = min(vlo, a-p.Off+p.Vaddr), max(vhi, b-p.Off+p.Vaddr)
	}
	if vlo >= vhi {
		return nil
	}
	return src.Range(vlo, vhi)
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

// PreloadSymbols reads the module's symbols and debug information now (see symbolize.Preload).
func (m *Module) PreloadSymbols() {
	if m.sym != nil {
		m.sym.Preload()
	}
}

// FetchDebug waits for the module's debug file from a debuginfod server, if one is wanted (see
// symbolize.FetchDebug): Symbolize alone never waits for a server.
func (m *Module) FetchDebug() {
	if m.sym != nil {
		m.sym.FetchDebug()
	}
}

// HasSymbols reports whether any function names are known for this module.
func (m *Module) HasSymbols() bool { return m.sym != nil && m.sym.HasSymbols() }

// FdPath names the module's file through the tracer's own descriptor (/proc/self/fd/N): what
// is opened or probed there is the file the module read, whatever its path names by then.
// "" for a stub.
func (m *Module) FdPath() string {
	if m.file == nil {
		return ""
	}
	return fmt.Sprintf("/proc/self/fd/%d", m.file.Fd())
}

// Size is the file's size in bytes.
func (m *Module) Size() int64 { return m.size }

// Opened reports whether the module's file could be opened (a stub names a file that could not).
func (m *Module) Opened() bool { return m.elf != nil }

func (m *Module) close() {
	if m.file != nil {
		m.file.Close()
	}
}
