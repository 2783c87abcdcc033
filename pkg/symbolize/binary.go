// Package symbolize turns addresses in ELF files into function, file:line
// (with inlined frames), using symbol tables, separate debug files and DWARF,
// cached per file.
package symbolize

import (
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/udstrace/udstrace/internal/safeopen"
)

// maxSectionSize bounds any single section we read, so hostile headers cannot
// make us allocate without limit.
const maxSectionSize = 512 << 20

// maxNoteSize bounds note sections/segments; build-id notes are tiny.
const maxNoteSize = 1 << 20

// Options for finding separate debug info.
type Options struct {
	DebugDirs []string // default {"/usr/lib/debug"}; for .build-id/xx/yyyy.debug and debuglink lookups
	Root      string   // prefix for looking up debug files and debuglink targets (e.g. "/proc/PID/root"); "" = host
	Path      string   // the path the binary was mapped from (for .gnu_debuglink's directory and messages)
	// Debuginfod, when not nil, is asked by build-id for a debug file none of the above gave.
	Debuginfod *Debuginfod
}

func (o Options) debugDirs() []string {
	if len(o.DebugDirs) == 0 {
		return []string{"/usr/lib/debug"}
	}
	return o.DebugDirs
}

// Frame is one source-level frame for an address.
type Frame struct {
	Function string // demangled (C++), C names as is; "" if unknown
	Offset   uint64 // vaddr - function start (for the outermost, non-inlined frame)
	File     string // source file, "" if no line info
	Line     int
	Inlined  bool // this frame was inlined into the next one
}

// segment is a PT_LOAD program header.
type segment struct {
	off, vaddr, filesz uint64
}

// Binary is a parsed ELF file; symbol tables and DWARF load lazily on first
// lookup. It is safe for concurrent use.
type Binary struct {
	f    *elf.File
	size int64
	opts Options

	buildID   string
	loads     []segment
	debuglink string
	debugCRC  uint32

	once    sync.Once
	closeMu sync.Mutex
	closer  io.Closer // closed once the lazy load no longer needs the reader
	closed  bool      // Close ran: the reader is gone
	tab     atomic.Pointer[tables]
	loadErr error

	// The file's own global function names (its .symtab and .dynsym, not a debug file's): what a
	// tail-call search asks of other modules, without loading their DWARF (globals.go).
	globalsOnce sync.Once
	globals     map[string]bool

	// A debug file to fetch from a debuginfod server: lookups use what is here until it came.
	remote     bool
	remoteOnce sync.Once
	localRaw   []rawSym // the file's own symbols, to merge with the fetched file's
}

// tables are what lookups read: the file's own, then with a fetched debug file's.
type tables struct {
	syms      *symtab
	dw        *dwarfInfo // nil when no usable DWARF
	debugPath string     // separate debug file used, if any
}

// Open parses the ELF headers of r. Symbol tables and DWARF are loaded on the
// first lookup and kept.
func Open(r io.ReaderAt, size int64, opts Options) (b *Binary, err error) {
	defer func() {
		if p := recovered(recover()); p != nil {
			b, err = nil, fmt.Errorf("parsing elf %s: panic: %v", opts.Path, p)
		}
	}()
	if size <= 0 {
		return nil, fmt.Errorf("opening elf %s: empty file", opts.Path)
	}
	// A file with broken section headers still gives its build-id (PT_NOTE) and loads.
	f, _, err := safeopen.NewELF(r, size)
	if err != nil {
		return nil, fmt.Errorf("parsing elf %s: %w", opts.Path, err)
	}
	b = &Binary{f: f, size: size, opts: opts}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Filesz > 0 {
			b.loads = append(b.loads, segment{off: p.Off, vaddr: p.Vaddr, filesz: p.Filesz})
		}
	}
	b.buildID = readBuildID(f, size)
	b.debuglink, b.debugCRC = readDebuglink(f, size)
	return b, nil
}

// BuildID returns the hex NT_GNU_BUILD_ID, "" if none.
func (b *Binary) BuildID() string { return b.buildID }

// DebugFile returns the path of the separate debug file in use ("" if none);
// it triggers the lazy load and waits for a debuginfod server (FetchDebug).
func (b *Binary) DebugFile() string {
	b.FetchDebug()
	return b.tab.Load().debugPath
}

// FileOffsetToVAddr maps a file offset (as in /proc/PID/maps) to a virtual
// address via the PT_LOAD segments.
func (b *Binary) FileOffsetToVAddr(off uint64) (uint64, bool) {
	for _, s := range b.loads {
		if off >= s.off && off-s.off < s.filesz {
			return s.vaddr + (off - s.off), true
		}
	}
	return 0, false
}

// HasSymbols reports whether .symtab, .dynsym or a debug file gives any
// function symbol.
func (b *Binary) HasSymbols() bool {
	b.load()
	t := b.tab.Load()
	return t.syms != nil && t.syms.funcs
}

// Close releases the reader if it is an io.Closer handed over by a Cache.
func (b *Binary) Close() error {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	b.closed = true
	if b.closer == nil {
		return nil
	}
	err := b.closer.Close()
	b.closer = nil
	return err
}

// Symbolize returns the frames for vaddr, innermost first (inlined frames
// before their caller); nil if nothing is known.
func (b *Binary) Symbolize(vaddr uint64) (frames []Frame) {
	defer func() {
		if recovered(recover()) != nil {
			frames = nil
		}
	}()
	b.load()
	t := b.tab.Load()
	var (
		symName  string
		symStart uint64
		haveSym  bool
	)
	if t.syms != nil {
		symName, symStart, haveSym = t.syms.lookup(vaddr)
	}
	var loc *dwarfLoc
	if t.dw != nil {
		loc = t.dw.lookup(vaddr)
	}
	if !haveSym && loc == nil {
		return nil
	}
	outer := Frame{}
	if haveSym {
		outer.Function = demangleName(symName)
		outer.Offset = vaddr - symStart
	}
	if loc == nil {
		return []Frame{outer}
	}
	frames = append(frames, loc.inlined...)
	outer.File, outer.Line = loc.file, loc.line
	if !haveSym && loc.funcName != "" {
		outer.Function = loc.funcName
		outer.Offset = vaddr - loc.funcLow
	}
	if outer.Function == "" && outer.File == "" && len(frames) == 0 {
		return nil
	}
	return append(frames, outer)
}

// Preload reads the symbols now, not at the first lookup, and fetches a debug file from a
// debuginfod server if one is wanted (FetchDebug): a tracer warms a binary this way while the
// trace runs, so the report does not wait for it.
func (b *Binary) Preload() { b.FetchDebug() }

// FetchDebug loads the symbols, then asks the debuginfod servers for a debug file if nothing here
// gave DWARF, waiting for the answer (bounded by the client's timeouts); lookups made meanwhile
// use what was here. A lookup never waits on a server by itself: the caller says when to.
func (b *Binary) FetchDebug() {
	b.load()
	if !b.remote {
		return
	}
	b.remoteOnce.Do(func() {
		defer func() {
			if p := recovered(recover()); p != nil {
				b.localRaw = nil
			}
		}()
		dbg, path := b.fetchDebugFile()
		if dbg == nil {
			b.localRaw = nil
			return
		}
		t := &tables{syms: buildSymtab(append(b.localRaw, dbg.syms...)), dw: dbg.dw, debugPath: path}
		if t.dw == nil {
			t.dw = b.tab.Load().dw
		}
		b.tab.Store(t)
		b.localRaw = nil
	})
}

// load reads symbol tables, a local separate debug file and DWARF once.
func (b *Binary) load() {
	b.once.Do(func() {
		defer func() {
			if p := recovered(recover()); p != nil {
				b.loadErr = fmt.Errorf("loading symbols %s: panic: %v", b.opts.Path, p)
			}
			if b.tab.Load() == nil {
				b.tab.Store(&tables{})
			}
			b.Close()
		}()
		b.loadErr = b.doLoad()
	})
}

func (b *Binary) doLoad() error {
	raw, symErr := readSymbols(b.f, b.size)
	b.globalsOnce.Do(func() { b.globals = globalNames(raw) })
	dw, dwErr := loadDWARF(b.f, b.size)
	t := &tables{}
	if dw == nil {
		// Stripped or --strip-debug file: a separate debug file can add both.
		if dbg, path := b.findDebugFile(); dbg != nil {
			t.debugPath = path
			raw = append(raw, dbg.syms...)
			if dbg.dw != nil {
				dw, dwErr = dbg.dw, nil
			}
		} else if b.opts.Debuginfod != nil && b.buildID != "" {
			b.remote, b.localRaw = true, raw
		}
	}
	t.syms, t.dw = buildSymtab(raw), dw
	b.tab.Store(t)
	return errors.Join(symErr, dwErr)
}

// LoadError reports why symbols or DWARF could not be (fully) loaded; lookups
// still use whatever did load.
func (b *Binary) LoadError() error {
	b.load()
	return b.loadErr
}

// readBuildID finds NT_GNU_BUILD_ID in note sections or PT_NOTE segments.
func readBuildID(f *elf.File, size int64) string {
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOTE || s.Flags&elf.SHF_COMPRESSED != 0 {
			continue
		}
		if id := buildIDFromNotes(f.ByteOrder, readRange(s.ReaderAt, s.Offset, s.Size, size)); id != "" {
			return id
		}
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		if id := buildIDFromNotes(f.ByteOrder, readRange(p.ReaderAt, p.Off, p.Filesz, size)); id != "" {
			return id
		}
	}
	return ""
}

// readRange reads n bytes of a note region, refusing sizes beyond the file.
func readRange(r io.ReaderAt, off, n uint64, fileSize int64) []byte {
	if r == nil || n == 0 || n > maxNoteSize || off > uint64(fileSize) || n > uint64(fileSize)-off {
		return nil
	}
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, 0); err != nil {
		return nil
	}
	return buf
}

func buildIDFromNotes(bo interface{ Uint32([]byte) uint32 }, d []byte) string {
	for len(d) >= 12 {
		namesz, descsz, typ := uint64(bo.Uint32(d)), uint64(bo.Uint32(d[4:])), bo.Uint32(d[8:])
		d = d[12:]
		nameEnd := align4(namesz)
		if nameEnd > uint64(len(d)) {
			return ""
		}
		name := d[:namesz]
		d = d[nameEnd:]
		descEnd := align4(descsz)
		if descsz > uint64(len(d)) {
			return ""
		}
		desc := d[:descsz]
		if typ == 3 && string(name) == "GNU\x00" && descsz > 0 {
			return hex.EncodeToString(desc)
		}
		if descEnd > uint64(len(d)) {
			return ""
		}
		d = d[descEnd:]
	}
	return ""
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// panicsFatal makes recovered panics re-panic; the fuzz test sets it so bugs
// are found instead of hidden by the last-line-of-defence recovers.
var panicsFatal bool

// recovered passes a recover() value through, re-panicking under panicsFatal.
func recovered(p any) any {
	if p != nil && panicsFatal {
		panic(p)
	}
	return p
}

// dwarf is the DWARF lookups read now (nil before the load, or without usable DWARF).
func (b *Binary) dwarf() *dwarfInfo {
	if t := b.tab.Load(); t != nil {
		return t.dw
	}
	return nil
}

// symbols is the symbol table lookups read now (nil before the load).
func (b *Binary) symbols() *symtab {
	if t := b.tab.Load(); t != nil {
		return t.syms
	}
	return nil
}
