package session

// A system-wide trace probes the libcs of the running processes at once; an allocator of its own
// (redis linked with jemalloc, a service with tcmalloc preloaded) that a process mapped before the
// trace began must be probed at once too, or its allocations are missed for good: no mapping event
// will come for it. These are found by the symbols each distinct executable file exports.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/udstrace/udstrace/internal/safeopen"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
)

// runningAllocator is an allocator object (not a libc) some running processes map, held open.
type runningAllocator struct {
	libcRef
	allocator string   // its name (jemalloc, tcmalloc, mimalloc, unknown)
	pids      []uint32 // the processes mapping it
}

// systemAllocators opens, once per file, each executable mapping of a running process that exports
// malloc and free and is not a C library (those are systemLibcs'). skip holds the libcs' keys.
func systemAllocators(skip map[string]bool) []*runningAllocator {
	byKey := map[string]*runningAllocator{}
	checked := map[string]bool{} // device:inode of every file looked at
	var out []*runningAllocator
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		f, err := os.Open(filepath.Join(d, "maps"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 6 || !strings.Contains(fields[1], "x") || fields[4] == "0" {
				continue
			}
			id := fields[3] + ":" + fields[4] // the maps line's device and inode
			if a := byKey[id]; a != nil {
				a.pids = append(a.pids, uint32(pid))
				continue
			}
			if checked[id] {
				continue
			}
			checked[id] = true
			if a := openAllocator(pid, sc.Text(), skip); a != nil {
				byKey[id] = a
				out = append(out, a)
			}
		}
		f.Close()
	}
	return out
}

// openAllocator opens the file of one maps line through map_files and keeps it if it is an
// allocator that no libc entry covers; nil otherwise.
func openAllocator(pid int, line string, skip map[string]bool) *runningAllocator {
	link, ok := mapFile(pid, line)
	if !ok {
		return nil
	}
	name, err := os.Readlink(link)
	if err != nil || loader.IsLibcName(name) {
		return nil
	}
	f, err := safeopen.Open(link, safeopen.Options{Follow: true})
	if err != nil {
		return nil
	}
	fd := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	key, err := loader.FileKey(fd)
	if err != nil || skip[key] {
		f.Close()
		return nil
	}
	kind, ok := loader.AllocatorOf(fd)
	if !ok || kind == "glibc" || kind == "musl" {
		f.Close()
		return nil
	}
	return &runningAllocator{libcRef: libcRef{f: f, name: name, root: procRoot(uint32(pid)), key: key}, allocator: kind, pids: []uint32{uint32(pid)}}
}

// attachRunningAllocators probes the allocators systemAllocators found and names them as the
// allocator of the processes mapping them (an allocator of its own comes before libc in the order
// symbols bind: preloaded or linked).
func (s *Session) attachRunningAllocators(skip map[string]bool) {
	began := time.Now()
	found := systemAllocators(skip)
	s.opts.Log.Debug("running allocators found", "objects", len(found), "took", time.Since(began))
	for _, a := range found {
		m, err := s.maps.AddOpened(a.f, a.name, a.root)
		if err == nil {
			err = s.attachModule(m)
		}
		if err != nil {
			s.warn("cannot probe the allocator %s: %v", a.name, err)
			continue
		}
		s.mu.Lock()
		for _, pid := range a.pids {
			s.meta.Allocators[pid] = report.Allocator{Name: a.allocator, Object: m.Path}
		}
		s.mu.Unlock()
	}
}
