package session

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/udstrace/udstrace/pkg/ktable"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
)

// tableLoader gives modules their ids and puts their unwind tables in the kernel, off the event
// path, so events keep flowing meanwhile (the kernel copies the stacks it cannot unwind yet).
//
// A module is ready as soon as its ELF headers are read; its rows come a 4 KiB page at a time:
// the pages a stack waits for at once, on the goroutine that reads the kernel's requests (from
// the cache when an earlier trace compiled them, else compiled: ~25 µs); the others in the
// background, a few at a time, on a worker goroutine that also readies the files of new images.
// Before run releases a command, or attach attaches, the files it maps are loaded whole.
type tableLoader struct {
	s      *Session
	cache  *ktable.Cache // nil: none
	mu     sync.Mutex
	mods   map[*procmaps.Module]*modState
	urgent []tableJob // new images, modules to ready, whole loads someone waits for
	later  []tableJob // whole loads in the background, a chunk at a time
	wake   chan struct{}
	closed bool
	exited chan struct{}

	// What was loaded, for the report.
	modules, pages, rows, cached int
	took                         time.Duration
	failures                     []string
}

// modState is one module's tables; guarded by tableLoader.mu but for the once.
type modState struct {
	readyOnce sync.Once
	ready     chan struct{} // closed once the kernel knows how to unwind through it
	whole     *loaded       // closed once every page is in
	queued    bool          // a whole load is queued
	waited    bool          // someone waits for the whole load: its chunks are urgent
	cold      *ktable.Entry // cached pages no stack asked for before, not loaded yet
	loaded    map[uint32][]uint64
	fromCache map[uint32]bool
	hot       map[uint32]bool // asked for by a stack, this trace or an earlier one
}

// loaded is closed once, whichever job finishes a module first.
type loaded struct {
	ch   chan struct{}
	once sync.Once
}

func (l *loaded) done() { l.once.Do(func() { close(l.ch) }) }

// tableJob is one unit of the worker's: ready a module, ready a new image's files, or load the
// next chunk of a whole module.
type tableJob struct {
	ready *procmaps.Module
	exec  *loader.Exec
	whole *procmaps.Module
	next  uint32 // whole: the next page to load
}

const (
	wholeChunk = 64        // pages a background job loads before letting other work in (~2 ms)
	cacheBytes = 256 << 20 // bound of the unwind cache on disk
)

func newTableLoader(s *Session) *tableLoader {
	tl := &tableLoader{s: s, mods: map[*procmaps.Module]*modState{}, wake: make(chan struct{}, 1), exited: make(chan struct{})}
	if dir := s.opts.CacheDir; dir != "" {
		if c, err := ktable.OpenCache(dir, cacheBytes); err != nil {
			s.warn("not using the unwind cache: %v", err)
		} else {
			tl.cache = c
		}
	}
	go tl.run()
	return tl
}

// state returns m's state, creating it; the caller holds tl.mu.
func (tl *tableLoader) state(m *procmaps.Module) *modState {
	st := tl.mods[m]
	if st == nil {
		st = &modState{ready: make(chan struct{}), whole: &loaded{ch: make(chan struct{})},
			loaded: map[uint32][]uint64{}, fromCache: map[uint32]bool{}, hot: map[uint32]bool{}}
		tl.mods[m] = st
	}
	return st
}

func (tl *tableLoader) push(j tableJob, urgent bool) {
	tl.mu.Lock()
	switch {
	case tl.closed:
	case urgent:
		tl.urgent = append(tl.urgent, j)
	default:
		tl.later = append(tl.later, j)
	}
	tl.mu.Unlock()
	select {
	case tl.wake <- struct{}{}:
	default:
	}
}

// want readies m on the worker (once); the channel is closed when it is.
func (tl *tableLoader) want(m *procmaps.Module) chan struct{} {
	tl.mu.Lock()
	st := tl.state(m)
	tl.mu.Unlock()
	tl.push(tableJob{ready: m}, true)
	return st.ready
}

// wantWhole readies m and loads all its pages, now if someone waits (urgent), else in the
// background; the channel is closed when every page is in.
func (tl *tableLoader) wantWhole(m *procmaps.Module, urgent bool) chan struct{} {
	tl.want(m)
	tl.mu.Lock()
	st := tl.state(m)
	queued, upgrade := st.queued, urgent && !st.waited
	st.queued, st.waited = true, st.waited || urgent
	tl.mu.Unlock()
	if !queued || upgrade {
		// A background load someone now waits for gets an urgent job too: pages already in are
		// skipped, and whichever job ends first says so.
		tl.push(tableJob{whole: m}, urgent)
	}
	return st.whole.ch
}

// wantImage loads the files a program maps at start (see loader.ResolveImage), whole.
func (tl *tableLoader) wantImage(program string) []chan struct{} {
	var out []chan struct{}
	for _, path := range loader.ResolveImage(program) {
		if m := tl.s.maps.AddFile(path); m != nil {
			out = append(out, tl.wantWhole(m, true))
		}
	}
	return out
}

// wait blocks until every channel is closed or the timeout passes; false on timeout.
func wait(chs []chan struct{}, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for _, ch := range chs {
		select {
		case <-ch:
		case <-deadline:
			return false
		}
	}
	return true
}

// stop ends the worker: urgent work still queued is done, background loads are dropped.
func (tl *tableLoader) stop() {
	tl.mu.Lock()
	tl.closed = true
	tl.later = nil
	tl.mu.Unlock()
	select {
	case tl.wake <- struct{}{}:
	default:
	}
	<-tl.exited
}

func (tl *tableLoader) next() (tableJob, bool) {
	for {
		tl.mu.Lock()
		var j tableJob
		switch {
		case len(tl.urgent) > 0:
			j, tl.urgent = tl.urgent[0], tl.urgent[1:]
		case len(tl.later) > 0:
			j, tl.later = tl.later[0], tl.later[1:]
		case tl.closed:
			tl.mu.Unlock()
			return j, false
		default:
			tl.mu.Unlock()
			<-tl.wake
			continue
		}
		tl.mu.Unlock()
		return j, true
	}
}

func (tl *tableLoader) run() {
	defer close(tl.exited)
	for {
		j, ok := tl.next()
		if !ok {
			return
		}
		switch {
		case j.ready != nil:
			tl.ensureReady(j.ready)
		case j.exec != nil:
			tl.loadExec(j.exec)
		case j.whole != nil:
			tl.loadChunk(j)
		}
	}
}

// register gives m its id in kernel stacks (the kernel may have given it one already).
func (tl *tableLoader) register(m *procmaps.Module) uint32 {
	if m.ID != 0 {
		return m.ID
	}
	dev, ino, ok := m.DevIno()
	if !ok {
		return 0
	}
	id, err := tl.s.tracer.RegisterModule(dev, ino)
	if err != nil {
		tl.fail(fmt.Sprintf("%s: %v", m.Path, err))
		return 0
	}
	tl.s.maps.SetID(m, id)
	return id
}

// ensureReady tells the kernel how to unwind through m (once, whoever asks first): with pages
// of rows, the hot ones from the cache loaded at once; with frame pointers (no CFI); or not at
// all (the file could not be opened).
func (tl *tableLoader) ensureReady(m *procmaps.Module) {
	tl.mu.Lock()
	st := tl.state(m)
	tl.mu.Unlock()
	st.readyOnce.Do(func() {
		defer close(st.ready)
		id := tl.register(m)
		if id == 0 {
			return
		}
		var err error
		switch {
		case !m.Opened():
			err = tl.s.tracer.SetModuleState(id, loader.ModNone)
		case !m.HasCFI():
			err = tl.s.tracer.SetModuleState(id, loader.ModFP)
		default:
			if err = tl.s.tracer.ReadyModule(id, m.Segments()); err == nil {
				tl.loadCached(m, st)
			}
		}
		tl.mu.Lock()
		tl.modules++
		tl.mu.Unlock()
		if err != nil {
			tl.fail(fmt.Sprintf("%s: %v", m.Path, err))
		}
	})
}

// loadCached loads the pages stacks asked for in earlier traces, from the cache; the others
// wait in st.cold for a stack or the background load.
func (tl *tableLoader) loadCached(m *procmaps.Module, st *modState) {
	if tl.cache == nil || m.BuildID == "" {
		return
	}
	e := tl.cache.Load(m.BuildID, m.Size())
	if e == nil || e.Rebase(tl.s.tracer.Dict()) != nil || tl.s.tracer.LoadPages(m.ID, e.Pages) != nil {
		return
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for pg, rows := range e.Pages {
		st.loaded[pg], st.fromCache[pg], st.hot[pg] = rows, true, true
	}
	tl.cached += len(e.Pages)
	st.cold = e
}

// Page loads a page the kernel asked for, at once (on the goroutine reading its requests).
func (tl *tableLoader) Page(p loader.PageRequest) {
	m := tl.s.maps.ByID(p.Mod)
	if m == nil {
		return
	}
	tl.loadPage(m, p.Page, true)
}

// pageUsed loads a page a user-space unwind just compiled: the stack that needed a copy has its
// other pages ready for the next event through them.
func (tl *tableLoader) pageUsed(m *procmaps.Module, pg uint32) {
	if m.ID != 0 {
		tl.loadPage(m, pg, true)
	}
}

// loadPage puts one page of m's rows in the kernel: from the cache if an earlier trace compiled
// it, else compiled now. hot: a stack needed it.
func (tl *tableLoader) loadPage(m *procmaps.Module, pg uint32, hot bool) {
	tl.mu.Lock()
	st := tl.state(m)
	if hot {
		st.hot[pg] = true
	}
	if _, ok := st.loaded[pg]; ok {
		tl.mu.Unlock()
		return
	}
	var rows []uint64
	cached := false
	if st.cold != nil {
		rows, cached = st.cold.TakeCold(pg)
	}
	tl.mu.Unlock()
	if tl.s.tracer.PageLoaded(m.ID, pg) {
		return
	}
	start := time.Now()
	lo := uint64(pg) << ktable.PageShift
	var err error
	if !cached {
		if t := m.PageTable(pg); t != nil {
			rows, err = ktable.Compile(t, m.Segments(), lo, lo+1<<ktable.PageShift, tl.s.tracer.Dict())
		}
		if err != nil || len(rows) == 0 {
			// No rule for it, or none fits: one gap row, so the kernel walks frame pointers there
			// instead of asking again.
			rows = []uint64{ktable.Row(lo, 0)}
		}
	}
	lerr := tl.s.tracer.LoadPage(m.ID, pg, rows)
	tl.mu.Lock()
	if lerr == nil {
		st.loaded[pg] = rows
		st.fromCache[pg] = cached
	}
	tl.took += time.Since(start)
	if cached {
		tl.cached++
	} else {
		tl.pages++
		tl.rows += len(rows)
	}
	tl.mu.Unlock()
	if err = cmpErr(err, lerr); err != nil {
		tl.fail(fmt.Sprintf("%s page %#x: %v", m.Path, lo, err))
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// loadChunk loads the next pages of a whole module, and queues the rest.
func (tl *tableLoader) loadChunk(j tableJob) {
	m := j.whole
	tl.ensureReady(m)
	first, n, ok := tl.s.tracer.ModulePages(m.ID)
	if used, capacity := tl.s.tracer.TableUse(); !j.urgentLoad(tl, m) && used > capacity/4*3 {
		ok = false // the last quarter of the rows is kept for pages stacks ask for
	}
	j.next = max(j.next, first)
	end := min(j.next+wholeChunk, first+n)
	for pg := j.next; ok && pg < end; pg++ {
		tl.loadPage(m, pg, false)
	}
	tl.mu.Lock()
	st := tl.state(m)
	urgent := st.waited
	tl.mu.Unlock()
	if ok && end < first+n {
		j.next = end
		tl.push(j, urgent)
		return
	}
	st.whole.done()
}

// urgentLoad reports whether someone waits for this whole load (run, attach).
func (j tableJob) urgentLoad(tl *tableLoader, m *procmaps.Module) bool {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.state(m).waited
}

// saveCache writes the pages of modules that got new ones this trace (with the cached pages the
// trace did not get to); call it after stop.
func (tl *tableLoader) saveCache() {
	if tl.cache == nil {
		return
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for m, st := range tl.mods {
		fresh := 0
		for pg := range st.loaded {
			if !st.fromCache[pg] {
				fresh++
			}
		}
		if m.BuildID == "" || fresh == 0 {
			continue
		}
		pages := maps.Clone(st.loaded)
		if st.cold != nil {
			for _, pg := range st.cold.Cold() {
				if rows, ok := st.cold.TakeCold(pg); ok {
					pages[pg] = rows
				}
			}
		}
		_ = tl.cache.Store(m.BuildID, m.Size(), ktable.NewEntry(pages, st.hot, tl.s.tracer.Dict()))
	}
}

func (tl *tableLoader) fail(msg string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.failures) < 32 {
		tl.failures = append(tl.failures, msg)
	}
}

// loadExec readies a new image's files at once, the program first (its code runs within the
// millisecond), then what it links; all are then loaded whole in the background.
func (tl *tableLoader) loadExec(e *loader.Exec) {
	path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", e.PID))
	if err != nil {
		path = e.Exe
	}
	path = strings.TrimSuffix(path, " (deleted)")
	if root := procRoot(e.PID); !isHostRoot(root) {
		path = filepath.Join(root, path)
	}
	tl.readyNow(path)
	for _, p := range loader.ResolveImage(path) {
		tl.readyNow(p)
	}
}

func (tl *tableLoader) readyNow(path string) {
	if m := tl.s.maps.AddFile(path); m != nil {
		tl.ensureReady(m)
		tl.wantWhole(m, false)
	}
}

func isHostRoot(root string) bool {
	target, err := os.Readlink(root)
	return err == nil && target == "/"
}
