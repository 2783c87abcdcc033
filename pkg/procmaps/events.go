package procmaps

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/udstrace/udstrace/internal/safeopen"
)

// Exec starts a process's mappings afresh for its new image.
func (t *Table) Exec(pid uint32, exe string, startCode, interpBase uint64, exeKey string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.procs, pid)
	// Read the live mappings only if they still show this image: by the time the event is read the
	// process may have exec'd again or be exiting (a zombie's maps are empty).
	if startCode != 0 && startCodeOf(pid) == startCode {
		if err := t.load(pid); err == nil && startCodeOf(pid) == startCode && len(t.procs[pid].maps) > 0 {
			return
		}
		delete(t.procs, pid)
	}
	// Place the executable from what the kernel told at exec.
	m := t.mods[exeKey]
	if m == nil {
		m = t.openExec(pid, exe, exeKey)
	}
	if m == nil {
		return
	}
	t.placeELF(pid, m, startCode, true)
	// The dynamic loader was mapped by the kernel too, at AT_BASE.
	if interpBase == 0 {
		return
	}
	for _, p := range m.elf.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return
		}
		path := strings.TrimRight(string(b), "\x00")
		f, err := safeopen.Open(path, safeopen.Options{Follow: true}) // a symlink, often (/lib64/ld-linux-x86-64.so.2)
		if err != nil {
			return
		}
		key := fileKey(f)
		ld := t.mods[key]
		if ld == nil {
			if ld, err = t.openModule(key, path, "", f); err != nil {
				f.Close()
				return
			}
			t.addModule(key, ld)
		} else {
			f.Close()
		}
		t.placeELF(pid, ld, interpBase, false)
	}
}

// openExec opens a process's executable, checked by identity: through /proc/PID/exe, then the exec
// path. The event may be read after the process exec'd again, so /proc/PID/exe may show another
// image by now: a file is named by the path it was found through only if that path is the file.
func (t *Table) openExec(pid uint32, exe, exeKey string) *Module {
	link := fmt.Sprintf("/proc/%d/exe", pid)
	for _, path := range []string{link, exe} {
		if !filepath.IsAbs(path) || strings.HasPrefix(path, "/proc/self/") {
			continue
		}
		// The exec path is the user's: it may be a FIFO by now (the process renamed one over it).
		f, err := safeopen.Open(path, safeopen.Options{Follow: true})
		if err != nil {
			continue
		}
		if fileKey(f) != exeKey {
			f.Close()
			continue
		}
		name := path
		if path == link {
			name = exeName(link, exe, exeKey)
		}
		m, err := t.openModule(exeKey, name, "/", f)
		if err != nil {
			f.Close()
			continue
		}
		t.addModule(exeKey, m)
		return m
	}
	return nil
}

// exeName names the image just opened through /proc/PID/exe: the link's target if it is that file
// (it may have changed since, the process exec'd once more), else the exec path if it is, else
// the target if it names no file now (deleted: nothing to check), else the exec path.
func exeName(link, exe, key string) string {
	l, err := os.Readlink(link)
	if err != nil {
		return exe
	}
	l = strings.TrimSuffix(l, " (deleted)")
	lk := statKey(l)
	if lk == key || (lk == "" && statKey(exe) != key) {
		return l
	}
	return exe
}

// statKey is the identity of the file a path names now, "" if none.
func statKey(path string) string {
	if !filepath.IsAbs(path) {
		return ""
	}
	f, err := safeopen.Open(path, safeopen.Options{Follow: true})
	if err != nil {
		return ""
	}
	defer f.Close()
	return fileKey(f)
}

// startCodeOf reads the start of a process's text from /proc/PID/stat (field 26); 0 if unknown or gone.
func startCodeOf(pid uint32) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')') // comm may hold spaces and parentheses
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 24 { // fields from 3 (state) on: startcode is field 26
		return 0
	}
	v, _ := strconv.ParseUint(f[23], 10, 64)
	return v
}

// placeELF maps a module's executable segments for a process from a known load address:
// the start of its text (startCode) or its load base.
func (t *Table) placeELF(pid uint32, m *Module, at uint64, atText bool) {
	bias := at
	if atText {
		minExec := ^uint64(0)
		for _, p := range m.loads {
			if p.Flags&elf.PF_X != 0 && p.Vaddr < minExec {
				minExec = p.Vaddr
			}
		}
		bias = at - minExec
	}
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
	t.mu.Lock()
	defer t.mu.Unlock()
	pp := t.procs[parent]
	if pp == nil {
		return
	}
	c := &proc{maps: append([]mapping(nil), pp.maps...), loaded: pp.loaded}
	t.procs[child] = c
}

// Map records an executable file mapping the process made; the file is opened now, while it is reachable.
func (t *Table) Map(pid uint32, addr, length, pgoff uint64, dev uint32, ino uint64, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if m := t.openMapped(pid, addr, length, dev, ino, name); m != nil {
		t.proc(pid).add(mapping{start: addr, end: addr + length, pgoff: pgoff, mod: m})
	}
}

// Open opens the file a process mapped at [addr, addr+length) without recording the mapping:
// for the drain goroutine, which must not reorder a process's mappings.
func (t *Table) Open(pid uint32, addr, length uint64, dev uint32, ino uint64, name string) *Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.openMapped(pid, addr, length, dev, ino, name)
}

func (t *Table) openMapped(pid uint32, addr, length uint64, dev uint32, ino uint64, name string) *Module {
	key := KernelDevKey(dev, ino)
	if m := t.mods[key]; m != nil {
		return m
	}
	end := (addr + length + 0xfff) &^ 0xfff
	path := t.pathOf(pid, addr, end, name)
	m := t.open(pid, key, path, addr, end)
	if m == nil {
		// Reading all the mappings also finds it when the range was merged with a neighbour.
		_ = t.load(pid)
		m = t.mods[key]
	}
	if m == nil {
		// Gone (the process exited or unmapped it, e.g. dlclose): find the file by name, checked by identity.
		m = t.search(pid, key, name)
	}
	if m != nil {
		delete(t.failures, path) // an earlier way failed, a later one worked
	} else if path == name && !strings.Contains(name, "/") {
		t.failures[path] = failure{key: key, why: "only its name is known (its path has more than 24 directories or 256 bytes, more than the kernel sends) " +
			"and the process had exited before its mapping could be opened; no file with its device and inode is beside the process's other files, " +
			"in their RUNPATH or RPATH, or in the system's library directories"}
	}
	return m
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
func (t *Table) Exit(pid uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.KeepExited {
		delete(t.procs, pid)
		delete(t.exes, pid)
	}
}

// searchDirs are where a mapped library is looked for by name once its process is gone.
var searchDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"}

// search finds a file the kernel named only by its last name (its path was too deep or long to
// send) once its process is gone: beside the files the process had mapped (a library dlopen()ed
// by a bare name through $ORIGIN, say), in their RUNPATH or RPATH, then in the system's library
// directories. Only a file with the mapping's device and inode is taken.
func (t *Table) search(pid uint32, key, name string) *Module {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return nil
	}
	for _, c := range t.nearDirs(pid) {
		// These are the user's directories: a symlink there is not followed.
		f, err := safeopen.Open(filepath.Join(c.root, c.dir, name), safeopen.Options{})
		if err != nil {
			continue
		}
		if fileKey(f) != key {
			f.Close()
			continue
		}
		m, err := t.openModule(key, filepath.Join(c.dir, name), c.root, f)
		if err != nil {
			f.Close()
			continue
		}
		t.addModule(key, m)
		return m
	}
	for _, d := range searchDirs {
		if m := t.addFile(filepath.Join(d, name)); m != nil && m.Key == key {
			return m
		}
	}
	return nil
}

// nearDir is a directory a process's loader may have found a library in, under the process's root.
type nearDir struct{ root, dir string }

// nearDirs lists where a library pid loaded may be: the directories of the files pid had mapped,
// its executable's (NoteExec: the event reader may be ahead of the mappings), then those of
// every file known, each with its RUNPATH and RPATH entries ($ORIGIN expanded; entries with
// other variables left out). At most maxNearDirs. The caller holds t.mu.
func (t *Table) nearDirs(pid uint32) []nearDir {
	var out []nearDir
	seen := map[nearDir]bool{}
	add := func(root, dir string) {
		if c := (nearDir{root, filepath.Clean(dir)}); filepath.IsAbs(dir) && !seen[c] && len(out) < maxNearDirs {
			seen[c] = true
			out = append(out, c)
		}
	}
	mods := map[*Module]bool{}
	addMod := func(m *Module) {
		if mods[m] || !filepath.IsAbs(m.Path) {
			return
		}
		mods[m] = true
		origin := filepath.Dir(m.Path)
		add(m.Root, origin)
		if m.elf == nil {
			return
		}
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			for _, list := range safeopen.DynStrings(m.elf, tag) {
				for _, e := range strings.Split(list, ":") {
					e = strings.ReplaceAll(strings.ReplaceAll(e, "${ORIGIN}", origin), "$ORIGIN", origin)
					if !strings.Contains(e, "$") {
						add(m.Root, e)
					}
				}
			}
		}
	}
	if p := t.procs[pid]; p != nil {
		for _, mp := range p.maps {
			addMod(mp.mod)
		}
	}
	if exe := t.exes[pid]; exe != "" {
		add("", filepath.Dir(exe))
	}
	for _, m := range t.mods {
		addMod(m)
	}
	return out
}

// maxNearDirs bounds the directories one search looks in.
const maxNearDirs = 512

// NoteExec records the executable a process now runs, as soon as its exec is read: a library it
// dlopen()s from beside it may have to be found by name before the exec is handled.
func (t *Table) NoteExec(pid uint32, exe string) {
	if !filepath.IsAbs(exe) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.exes[pid] = exe
}

// AddFile opens a file as a module ahead of need (a libc udstrace probes); it returns the module or nil.
func (t *Table) AddFile(path string) *Module {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.addFile(path)
}

func (t *Table) addFile(path string) *Module {
	m, _ := t.openFile(path)
	return m
}

// OpenFile is AddFile saying why a file could not be opened.
func (t *Table) OpenFile(path string) (*Module, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.openFile(path)
}

func (t *Table) openFile(path string) (*Module, error) {
	f, err := safeopen.Open(path, safeopen.Options{Follow: true})
	if err != nil {
		return nil, err
	}
	return t.adopt(f, path, "")
}

// AddOpened adopts a file opened through safeopen (a libc found through a process's map_files),
// named as the process sees it; root is that process's root for its debug files ("" for the
// host's). The table owns f from now on.
func (t *Table) AddOpened(f *os.File, name, root string) (*Module, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.adopt(f, name, root)
}

func (t *Table) adopt(f *os.File, name, root string) (*Module, error) {
	key := fileKey(f)
	if m := t.mods[key]; m != nil && m.Opened() {
		f.Close()
		return m, nil
	}
	m, err := t.openModule(key, name, root, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	t.addModule(key, m)
	return m, nil
}
