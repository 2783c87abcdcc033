package session

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/udstrace/udstrace/pkg/ktable"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
)

// tableLoader gives modules their ids and loads their unwind tables into the kernel, on a
// goroutine of its own, so events keep flowing meanwhile (the kernel copies the stacks it cannot
// unwind yet). A module is ready as soon as its ELF headers are read; its rows come a 4 KiB page
// at a time: first the pages stacks are waiting for (the kernel asks for each), then, in the
// background a few pages at a time, the rest of the modules of images that were started.
// Before run releases a command, or attach attaches, the files it maps are loaded whole.
type tableLoader struct {
	s      *Session
	mu     sync.Mutex
	urgent []tableJob // pages stacks wait for, modules to make ready, new images
	later  []tableJob // whole modules, a chunk of pages at a time
	wake   chan struct{}
	closed bool
	ready  map[*procmaps.Module]chan struct{} // closed once the module is ready
	whole  map[*procmaps.Module]*loaded       // all its pages are loaded
	waited map[*procmaps.Module]bool          // whole loads someone waits for (run, attach): urgent
	asked  map[pageKey]bool
	exited chan struct{}

	// What was loaded, for the report.
	modules, pages, rows int
	took                 time.Duration
	failures             []string
}

type pageKey struct{ mod, page uint32 }

// loaded is closed once, whichever job finishes a module first.
type loaded struct {
	ch   chan struct{}
	once sync.Once
}

func (l *loaded) done() { l.once.Do(func() { close(l.ch) }) }

// tableJob is one unit of work: make a module ready, load one page, load a new image's files, or
// load the next chunk of a whole module.
type tableJob struct {
	ready *procmaps.Module
	page  *loader.PageRequest
	exec  *loader.Exec
	whole *procmaps.Module
	next  uint32 // whole: the next page to load
}

// wholeChunk is how many pages a whole-module job loads before letting urgent work in (~2 ms).
const wholeChunk = 64

func newTableLoader(s *Session) *tableLoader {
	tl := &tableLoader{s: s, wake: make(chan struct{}, 1), ready: map[*procmaps.Module]chan struct{}{},
		whole: map[*procmaps.Module]*loaded{}, waited: map[*procmaps.Module]bool{}, asked: map[pageKey]bool{}, exited: make(chan struct{})}
	go tl.run()
	return tl
}

func (tl *tableLoader) push(j tableJob, urgent, first bool) {
	tl.mu.Lock()
	switch {
	case tl.closed:
	case !urgent:
		tl.later = append(tl.later, j)
	case first:
		tl.urgent = append([]tableJob{j}, tl.urgent...)
	default:
		tl.urgent = append(tl.urgent, j)
	}
	tl.mu.Unlock()
	select {
	case tl.wake <- struct{}{}:
	default:
	}
}

// page queues a page a stack waits for, ahead of everything, once.
func (tl *tableLoader) page(p loader.PageRequest) {
	k := pageKey{p.Mod, p.Page}
	tl.mu.Lock()
	seen := tl.asked[k]
	tl.asked[k] = true
	tl.mu.Unlock()
	if !seen {
		tl.push(tableJob{page: &p}, true, true)
	}
}

// want makes m ready (once) and returns a channel closed when it is.
func (tl *tableLoader) want(m *procmaps.Module) chan struct{} {
	tl.mu.Lock()
	ch, ok := tl.ready[m]
	if !ok {
		ch = make(chan struct{})
		tl.ready[m] = ch
	}
	tl.mu.Unlock()
	if !ok {
		tl.push(tableJob{ready: m}, true, false)
	}
	return ch
}

// wantWhole makes m ready and loads all its pages (once), now if urgent, else in the background;
// the channel is closed when every page is in.
func (tl *tableLoader) wantWhole(m *procmaps.Module, urgent bool) chan struct{} {
	tl.want(m)
	tl.mu.Lock()
	l, ok := tl.whole[m]
	if !ok {
		l = &loaded{ch: make(chan struct{})}
		tl.whole[m] = l
	}
	upgrade := urgent && !tl.waited[m]
	if urgent {
		tl.waited[m] = true
	}
	tl.mu.Unlock()
	if !ok || upgrade {
		// A background load someone now waits for gets an urgent job too: pages already in
		// are skipped, and whichever job ends first says so.
		tl.push(tableJob{whole: m}, urgent, false)
	}
	return l.ch
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
		case j.page != nil:
			tl.loadPage(*j.page)
		case j.ready != nil:
			tl.makeReady(j.ready)
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

// makeReady tells the kernel how to unwind through m: with pages of rows, frame pointers (no
// CFI), or not at all (the file could not be opened).
func (tl *tableLoader) makeReady(m *procmaps.Module) {
	tl.mu.Lock()
	ch := tl.ready[m]
	tl.mu.Unlock()
	defer close(ch)
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
		err = tl.s.tracer.ReadyModule(id, m.Segments())
	}
	tl.mu.Lock()
	tl.modules++
	tl.mu.Unlock()
	if err != nil {
		tl.fail(fmt.Sprintf("%s: %v", m.Path, err))
	}
}

// loadChunk loads the next pages of a whole module, and queues the rest.
func (tl *tableLoader) loadChunk(j tableJob) {
	m := j.whole
	first, n, ok := tl.s.tracer.ModulePages(m.ID)
	if j.next < first {
		j.next = first
	}
	end := min(j.next+wholeChunk, first+n)
	for pg := j.next; ok && pg < end; pg++ {
		tl.loadPage(loader.PageRequest{Mod: m.ID, Page: pg})
	}
	tl.mu.Lock()
	l, urgent := tl.whole[m], tl.waited[m]
	tl.mu.Unlock()
	if ok && end < first+n {
		j.next = end
		tl.push(j, urgent, false)
		return
	}
	if l != nil {
		l.done()
	}
}

// loadPage compiles one page of a module's rows for the kernel.
func (tl *tableLoader) loadPage(p loader.PageRequest) {
	m := tl.s.maps.ByID(p.Mod)
	if m == nil || tl.s.tracer.PageLoaded(p.Mod, p.Page) {
		return
	}
	start := time.Now()
	lo := uint64(p.Page) << ktable.PageShift
	var rows []uint64
	var err error
	if t := m.PageTable(p.Page); t != nil {
		rows, err = ktable.Compile(t, m.Segments(), lo, lo+1<<ktable.PageShift, tl.s.tracer.Dict())
	}
	if err != nil || len(rows) == 0 {
		// No rule for it (or none fits): one gap row, so the kernel walks frame pointers there
		// instead of asking again.
		rows = []uint64{ktable.Row(lo, 0)}
	}
	if lerr := tl.s.tracer.LoadPage(p.Mod, p.Page, rows); err == nil {
		err = lerr
	}
	tl.mu.Lock()
	tl.took += time.Since(start)
	tl.pages++
	tl.rows += len(rows)
	tl.mu.Unlock()
	if err != nil {
		tl.fail(fmt.Sprintf("%s page %#x: %v", m.Path, lo, err))
	}
}

// pageUsed loads into the kernel a page a user-space unwind just compiled: the stack that needed
// a copy has its other pages ready for the next event through them.
func (tl *tableLoader) pageUsed(m *procmaps.Module, pg uint32) {
	if m.ID != 0 && !tl.s.tracer.PageLoaded(m.ID, pg) {
		tl.loadPage(loader.PageRequest{Mod: m.ID, Page: pg})
	}
}

func (tl *tableLoader) fail(msg string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.failures) < 32 {
		tl.failures = append(tl.failures, msg)
	}
}

// loadExec makes a new image's files ready at once (its program, loader and libraries), and
// loads them whole in the background.
func (tl *tableLoader) loadExec(e *loader.Exec) {
	path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", e.PID))
	if err != nil {
		path = e.Exe
	}
	path = strings.TrimSuffix(path, " (deleted)")
	if root := procRoot(e.PID); !isHostRoot(root) {
		path = filepath.Join(root, path)
	}
	for _, p := range loader.ResolveImage(path) {
		m := tl.s.maps.AddFile(p)
		if m == nil {
			continue
		}
		tl.mu.Lock()
		_, queued := tl.ready[m]
		if !queued {
			tl.ready[m] = make(chan struct{})
		}
		tl.mu.Unlock()
		if !queued {
			tl.makeReady(m)
		}
		tl.wantWhole(m, false)
	}
}

func isHostRoot(root string) bool {
	target, err := os.Readlink(root)
	return err == nil && target == "/"
}
