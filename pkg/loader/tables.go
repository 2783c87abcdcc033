package loader

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udstrace/udstrace/pkg/kstack"
	"github.com/udstrace/udstrace/pkg/ktable"
)

// ModState is how the kernel's unwinder treats a module (bpf/modules.h enum mod_state).
type ModState uint8

const (
	ModPending ModState = 0 // not indexed yet: frames in it need the copy fallback
	ModReady   ModState = 1 // pages of rows load as stacks need them
	ModFP      ModState = 2 // no CFI: frame pointers
	ModCopy    ModState = 3 // CFI the kernel could not hold: always the copy fallback
	ModNone    ModState = 4 // the file could not be opened: stacks stop at its frame
)

const (
	pageLoaded = 1 // bpf/unwind.h enum page_state
	pageAsked  = 2
)

// tables owns the kernel's unwind tables: the shared rule dictionary, the rows and the pages
// (both written through mmap), and the module registry.
type tables struct {
	mu        sync.Mutex
	objs      *udstraceObjects
	rows      []uint64 // unwind_rows, mapped
	pages     []uint64 // unwind_pages, mapped
	rowsUsed  uint32
	pagesUsed uint32
	dict      *ktable.Dict
	loaded    int    // rules already in unwind_rules
	nextUser  uint32 // next user-space module id
	mods      map[uint32]modPages
}

// modPages is where a ready module's page entries are.
type modPages struct{ first, base, n uint32 }

func mapWords(m *ebpf.Map) ([]uint64, error) {
	size := int(m.MaxEntries()) * 8
	b, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", m, err)
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8), nil
}

func (tb *tables) init(o *udstraceObjects) error {
	var err error
	if tb.rows, err = mapWords(o.UnwindRows); err != nil {
		return err
	}
	if tb.pages, err = mapWords(o.UnwindPages); err != nil {
		tb.close()
		return err
	}
	tb.objs = o
	tb.dict = ktable.NewDict(int(o.UnwindRules.MaxEntries()))
	tb.nextUser = 1
	tb.mods = map[uint32]modPages{}
	return nil
}

func unmapWords(w []uint64) {
	if len(w) > 0 {
		_ = unix.Munmap(unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), len(w)*8))
	}
}

func (tb *tables) close() {
	unmapWords(tb.rows)
	unmapWords(tb.pages)
	tb.rows, tb.pages = nil, nil
}

// ErrTableFull means the kernel's unwind tables cannot hold more (see --unwind-rows).
var ErrTableFull = errors.New("kernel unwind table full")

// RegisterModule gives the file with this device (kernel encoding) and inode a module id, or
// returns the one it has (the kernel may have named it first).
func (t *Tracer) RegisterModule(dev uint32, ino uint64) (uint32, error) {
	tb := &t.tables
	key := udstraceModuleKey{Ino: ino, Dev: dev}
	var id uint32
	if err := tb.objs.Modules.Lookup(key, &id); err == nil {
		return id, nil
	}
	tb.mu.Lock()
	if tb.nextUser >= kstack.KernelIDs {
		tb.mu.Unlock()
		return 0, fmt.Errorf("registering module %d:%d: %w (module ids)", dev, ino, ErrTableFull)
	}
	id = tb.nextUser
	tb.nextUser++
	tb.mu.Unlock()
	if err := tb.objs.ModInfo.Put(id, udstraceModuleInfo{State: uint8(ModPending)}); err != nil {
		return 0, fmt.Errorf("registering module: %w", err)
	}
	if err := tb.objs.Modules.Update(key, id, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) && tb.objs.Modules.Lookup(key, &id) == nil {
			return id, nil // the kernel named it meanwhile
		}
		return 0, fmt.Errorf("registering module: %w", err)
	}
	return id, nil
}

// ReadyModule gives a module page entries for its executable segments, none loaded yet: from
// now on the kernel asks for each page (EV_PAGE) the first time a stack needs it.
func (t *Tracer) ReadyModule(id uint32, segs []ktable.Segment) error {
	tb := &t.tables
	if len(segs) == 0 {
		return t.SetModuleState(id, ModFP)
	}
	lo, hi := ^uint64(0), uint64(0)
	for _, s := range segs {
		lo, hi = min(lo, s.Off), max(hi, s.Off+s.Filesz)
	}
	base := uint32(lo >> ktable.PageShift)
	n := uint32((hi+1<<ktable.PageShift-1)>>ktable.PageShift) - base
	tb.mu.Lock()
	if _, ok := tb.mods[id]; ok {
		tb.mu.Unlock()
		return nil
	}
	if uint64(tb.pagesUsed)+uint64(n) > uint64(len(tb.pages)) {
		tb.mu.Unlock()
		_ = t.SetModuleState(id, ModCopy)
		return fmt.Errorf("indexing %d pages (%d of %d used): %w", n, tb.pagesUsed, len(tb.pages), ErrTableFull)
	}
	mp := modPages{first: tb.pagesUsed, base: base, n: n}
	tb.pagesUsed += n
	tb.mods[id] = mp
	tb.mu.Unlock()
	// Two steps, so a reader never sees ready with another module's pages.
	info := udstraceModuleInfo{PageFirst: mp.first, Npages: n, PageBase: base, State: uint8(ModPending)}
	if err := tb.objs.ModInfo.Put(id, info); err != nil {
		return fmt.Errorf("publishing module pages: %w", err)
	}
	info.State = uint8(ModReady)
	if err := tb.objs.ModInfo.Put(id, info); err != nil {
		return fmt.Errorf("publishing module pages: %w", err)
	}
	return nil
}

// LoadPage puts a page of rows (ktable.Compile of that page) into the kernel. Loading a page
// twice keeps the first.
func (t *Tracer) LoadPage(id, page uint32, rows []uint64) error {
	return t.LoadPages(id, map[uint32][]uint64{page: rows})
}

// LoadPages puts pages of rows into the kernel at once (a module's cached pages).
func (t *Tracer) LoadPages(id uint32, pages map[uint32][]uint64) error {
	tb := &t.tables
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if err := tb.flushRules(); err != nil {
		return err
	}
	var errs []error
	for page, rows := range pages {
		errs = append(errs, tb.loadPage(id, page, rows))
	}
	return errors.Join(errs...)
}

// loadPage writes one page; the caller holds tb.mu and has flushed the rules.
func (tb *tables) loadPage(id, page uint32, rows []uint64) error {
	mp, ok := tb.mods[id]
	if !ok || page < mp.base || page-mp.base >= mp.n {
		return fmt.Errorf("loading page %d of module %d: not one of its pages", page, id)
	}
	entry := &tb.pages[mp.first+page-mp.base]
	if atomic.LoadUint64(entry)>>48 == pageLoaded {
		return nil
	}
	if len(rows) == 0 || len(rows) > ktable.MaxRows {
		return fmt.Errorf("loading page %d of module %d: %d rows", page, id, len(rows))
	}
	n := uint32(len(rows))
	if uint64(tb.rowsUsed)+uint64(n) > uint64(len(tb.rows)) {
		return fmt.Errorf("loading %d unwind rows (%d of %d used): %w", n, tb.rowsUsed, len(tb.rows), ErrTableFull)
	}
	first := tb.rowsUsed
	copy(tb.rows[first:], rows)
	tb.rowsUsed += n
	// The rows are in place before the entry that points at them says loaded (x86: stores are
	// not reordered; the atomic store orders them elsewhere too).
	atomic.StoreUint64(entry, uint64(first)|uint64(n)<<32|uint64(pageLoaded)<<48)
	return nil
}

// ModulePages is the range of pages (file offset >> ktable.PageShift) of a ready module.
func (t *Tracer) ModulePages(id uint32) (first, n uint32, ok bool) {
	t.tables.mu.Lock()
	defer t.tables.mu.Unlock()
	mp, ok := t.tables.mods[id]
	return mp.base, mp.n, ok
}

// PageLoaded reports whether a page of a ready module is in the kernel.
func (t *Tracer) PageLoaded(id, page uint32) bool {
	tb := &t.tables
	tb.mu.Lock()
	defer tb.mu.Unlock()
	mp, ok := tb.mods[id]
	if !ok || page < mp.base || page-mp.base >= mp.n {
		return false
	}
	return atomic.LoadUint64(&tb.pages[mp.first+page-mp.base])>>48 == pageLoaded
}

// Dict is the rule dictionary rows are compiled against.
func (t *Tracer) Dict() *ktable.Dict { return t.tables.dict }

// flushRules writes the rules interned since the last flush; the caller holds tb.mu.
func (tb *tables) flushRules() error {
	for i, r := range tb.dict.Rules(tb.loaded) {
		v := udstraceUnwindRule{
			CfaKind: r.CFAKind, CfaReg: r.CFAReg, RaKind: r.RAKind, RaReg: r.RAReg,
			FpKind: r.FPKind, FpReg: r.FPReg, Aux: r.Aux, Flags: r.Flags,
			CfaOff: r.CFAOff, RaOff: r.RAOff, FpOff: r.FPOff,
		}
		if err := tb.objs.UnwindRules.Put(uint32(tb.loaded+i), v); err != nil {
			return fmt.Errorf("writing unwind rules: %w", err)
		}
	}
	tb.loaded = tb.dict.Len()
	return nil
}

// SetModuleState tells the kernel how to unwind through a module without pages.
func (t *Tracer) SetModuleState(id uint32, s ModState) error {
	if err := t.tables.objs.ModInfo.Put(id, udstraceModuleInfo{State: uint8(s)}); err != nil {
		return fmt.Errorf("setting module %d: %w", id, err)
	}
	return nil
}

// TableUse reports the unwind rows in use and their capacity.
func (t *Tracer) TableUse() (used, capacity uint32) {
	t.tables.mu.Lock()
	defer t.tables.mu.Unlock()
	return t.tables.rowsUsed, uint32(len(t.tables.rows))
}
