package procmaps

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/internal/safeopen"
	"github.com/udstrace/udstrace/pkg/symbolize"
)

type mapping struct {
	start, end, pgoff uint64
	mod               *Module
}

type proc struct {
	maps   []mapping // sorted by start
	loaded bool      // /proc/PID/maps was read at least once
}

// Table holds every traced process's executable mappings and the modules they map.
type Table struct {
	mu    sync.Mutex // the reader goroutine and the attaching one both use the table
	mods  map[string]*Module
	byID  map[uint32]*Module // modules by kernel-stack id
	named *sync.Cond         // broadcast when byID gains an entry
	procs map[uint32]*proc
	exes  map[uint32]string // each process's executable as its exec was read (NoteExec)
	// KeepExited keeps a process's mappings after it exits, for stacks read at the end (count mode).
	KeepExited bool
	// failures records files that could not be opened, by path, for the report's warnings.
	failures map[string]failure
	// Register gives a module found in user space (a copied stack, a free's caller) its id in
	// kernel stacks; 0 when it cannot. Called without the table's lock.
	Register func(m *Module) uint32
	// PageUsed hears of each page of CFI a user-space unwind compiled (the kernel may want it
	// too). Called without the table's lock.
	PageUsed func(m *Module, pg uint32)
	// Adopted hears of a module opened after the kernel had named it and it could not be opened.
	Adopted func(m *Module)
	// Debuginfod, when set before the first module is opened, fetches the debug files of
	// modules that have none here (at their first symbol lookup, not when they are opened).
	Debuginfod *symbolize.Debuginfod
}

// New returns an empty table.
func New() *Table {
	t := &Table{
		mods:     map[string]*Module{},
		byID:     map[uint32]*Module{},
		procs:    map[uint32]*proc{},
		exes:     map[uint32]string{},
		failures: map[string]failure{},
	}
	t.named = sync.NewCond(&t.mu)
	return t
}

// Close releases every open file.
func (t *Table) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.mods {
		m.close()
	}
}

// Modules returns the modules seen so far.
func (t *Table) Modules() map[string]*Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]*Module, len(t.mods))
	for k, m := range t.mods {
		out[k] = m
	}
	return out
}

// Module returns a module by key.
func (t *Table) Module(key string) *Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mods[key]
}

// ModulesOf lists the modules a process's known mappings show.
func (t *Table) ModulesOf(pid uint32) []*Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.procs[pid]
	if p == nil {
		return nil
	}
	seen := map[*Module]bool{}
	var out []*Module
	for _, m := range p.maps {
		if !seen[m.mod] {
			seen[m.mod] = true
			out = append(out, m.mod)
		}
	}
	return out
}

type failure struct{ key, why string }

// addModule records an opened module; one the kernel named before it could be opened (a stub)
// gets its id, and Adopted hears of it. The caller holds t.mu.
func (t *Table) addModule(key string, m *Module) {
	t.mods[key] = m
	for id, stub := range t.byID {
		if stub.Key == key && !stub.Opened() && m.Opened() {
			m.ID = id
			t.byID[id] = m
			t.named.Broadcast()
			if t.Adopted != nil {
				go t.Adopted(m) // not under the lock
			}
		}
	}
}

// Failures lists the files that could not be opened, by path, leaving out those opened later by
// another way (a process's exec path once its mappings were gone, say).
func (t *Table) Failures() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]string{}
	for path, f := range t.failures {
		if m := t.mods[f.key]; m == nil || !m.Opened() {
			out[path] = f.why
		}
	}
	return out
}

// Partial lists the modules that parsed only in part, by path, with what is missing.
func (t *Table) Partial() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]string{}
	for _, m := range t.mods {
		if m.Lost != nil {
			out[m.Path] = m.Lost.Error()
		}
	}
	return out
}

// SetID records a module's id in kernel stacks.
func (t *Table) SetID(m *Module, id uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m.ID = id
	t.byID[id] = m
	t.named.Broadcast()
}

// WaitID returns the module with this id, waiting up to timeout for it to be named: a module the
// kernel met is named by its request, which may still be on its way.
func (t *Table) WaitID(id uint32, timeout time.Duration) *Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.byID[id]; m != nil || timeout <= 0 {
		return m
	}
	expired := false
	timer := time.AfterFunc(timeout, func() {
		t.mu.Lock()
		expired = true
		t.named.Broadcast()
		t.mu.Unlock()
	})
	defer timer.Stop()
	for t.byID[id] == nil && !expired {
		t.named.Wait()
	}
	return t.byID[id]
}

// ByID returns the module with this id, or nil.
func (t *Table) ByID(id uint32) *Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byID[id]
}

// Stub records a module the kernel named that could not be opened, so its frames keep a name.
func (t *Table) Stub(id uint32, key, name string) *Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.byID[id]; m != nil {
		return m
	}
	m := &Module{Key: key, Path: name, ID: id}
	t.byID[id] = m
	t.named.Broadcast()
	return m
}

func (t *Table) proc(pid uint32) *proc {
	p := t.procs[pid]
	if p == nil {
		p = &proc{}
		t.procs[pid] = p
	}
	return p
}

// Known reports whether a process's mappings have been read.
func (t *Table) Known(pid uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.procs[pid]
	return p != nil && p.loaded
}

// Load reads /proc/PID/maps, opening each executable file mapping not open yet.
func (t *Table) Load(pid uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.load(pid)
}

func (t *Table) load(pid uint32) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return fmt.Errorf("reading mappings of %d: %w", pid, err)
	}
	defer f.Close()
	p := t.proc(pid)
	p.loaded = true
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		start, end, pgoff, key, path, ok := parseMapsLine(sc.Text())
		if !ok {
			continue
		}
		m := t.mods[key]
		if m == nil {
			// The text squeezes spaces and escapes newlines; the kernel's link has the exact name.
			path = t.pathOf(pid, start, end, path)
			m = t.open(pid, key, path, start, end)
		}
		if m != nil {
			p.add(mapping{start: start, end: end, pgoff: pgoff, mod: m})
		}
	}
	return sc.Err()
}

// parseMapsLine returns an executable file mapping's range, offset, file key and path.
func parseMapsLine(line string) (start, end, pgoff uint64, key, path string, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 || !strings.Contains(fields[1], "x") || fields[4] == "0" {
		return
	}
	se := strings.SplitN(fields[0], "-", 2)
	if len(se) != 2 {
		return
	}
	var err1, err2, err3 error
	start, err1 = strconv.ParseUint(se[0], 16, 64)
	end, err2 = strconv.ParseUint(se[1], 16, 64)
	pgoff, err3 = strconv.ParseUint(fields[2], 16, 64)
	dev := strings.SplitN(fields[3], ":", 2)
	if err1 != nil || err2 != nil || err3 != nil || len(dev) != 2 {
		return
	}
	maj, err1 := strconv.ParseUint(dev[0], 16, 32)
	min, err2 := strconv.ParseUint(dev[1], 16, 32)
	if err1 != nil || err2 != nil {
		return
	}
	path = strings.Join(fields[5:], " ")
	return start, end, pgoff, fmt.Sprintf("%d:%d:%s", maj, min, fields[4]), path, true
}

// open finds a mapped file: first through the process's map_files (containers, deleted files), then its root.
func (t *Table) open(pid uint32, key, path string, start, end uint64) *Module {
	root := fmt.Sprintf("/proc/%d/root", pid)
	if target, err := os.Readlink(root); err == nil && target == "/" {
		root = "" // the host's own root: stays valid after the process exits
	}
	tries := []string{fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, start, end), filepath.Join(root, path)}
	if filepath.IsAbs(path) && root != "" {
		// The kernel's own path of the file, from the root of the mount tree: it still opens once
		// the process is gone (the identity check below says whether it is the same file).
		tries = append(tries, path)
	}
	var lastErr error
	for i, name := range tries {
		// map_files is the kernel's link to the very file mapped; the paths after it are names a
		// user may have replaced since (a FIFO, a symlink): those are not followed.
		f, err := safeopen.Open(name, safeopen.Options{Follow: i == 0})
		if err != nil {
			lastErr = err
			continue
		}
		if fileKey(f) != key {
			f.Close()
			lastErr = fmt.Errorf("%s was replaced since it was mapped", path)
			continue
		}
		m, err := t.openModule(key, strings.TrimSuffix(path, " (deleted)"), root, f)
		if err != nil {
			f.Close()
			lastErr = err
			continue
		}
		t.addModule(key, m)
		return m
	}
	if lastErr != nil {
		t.failures[path] = failure{key: key, why: lastErr.Error()}
	}
	return nil
}

func fileKey(f *os.File) string {
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d", (s.Dev>>8)&0xfff, (s.Dev&0xff)|((s.Dev>>12)&0xfff00), s.Ino)
}

// KernelDevKey turns the kernel's dev_t encoding (major<<20|minor) and an inode into a module key.
func KernelDevKey(dev uint32, ino uint64) string {
	return fmt.Sprintf("%d:%d:%d", dev>>20, dev&0xfffff, ino)
}

func (p *proc) add(m mapping) {
	i := sort.Search(len(p.maps), func(i int) bool { return p.maps[i].start >= m.start })
	if i < len(p.maps) && p.maps[i].start == m.start {
		p.maps[i] = m
		return
	}
	p.maps = append(p.maps, mapping{})
	copy(p.maps[i+1:], p.maps[i:])
	p.maps[i] = m
}

func (p *proc) find(pc uint64) *mapping {
	i := sort.Search(len(p.maps), func(i int) bool { return p.maps[i].end > pc })
	if i < len(p.maps) && p.maps[i].start <= pc {
		return &p.maps[i]
	}
	return nil
}
