package session

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/udstrace/udstrace/internal/safeopen"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
)

// Target errors: what was found at a PID, in words a user can act on.
var (
	ErrNoProcess    = errors.New("no such process")
	ErrKernelThread = errors.New("is a kernel thread: it has no user-space allocator to trace")
	ErrZombie       = errors.New("has exited (zombie): nothing left to trace")
	ErrNoLibcMapped = errors.New("maps no libc: udstrace traces libc's malloc family, which this process (static binary, Go program) does not use")
	ErrExitedAttach = errors.New("exited while udstrace was attaching")
)

// libcRef is a libc a live process maps, held open from when it was found: the process may
// exit, or rename something else over the path, before the probes are placed.
type libcRef struct {
	f    *os.File
	name string // the path as the process sees it
	root string // the process's root, for its debug files; "" for the host's
	key  string
}

func (l libcRef) close() {
	if l.f != nil {
		l.f.Close()
	}
}

func closeRefs(refs []libcRef) {
	for _, l := range refs {
		l.close()
	}
}

// libcOf finds the libc a live process maps and opens it through /proc/PID/map_files, the
// kernel's link to the very file mapped (never a FIFO put at its path since); skip, when not
// nil, says which files (by key) need not be opened again.
func libcOf(pid int, skip map[string]bool) (libcRef, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, ErrNoProcess)
		}
		return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, err)
	}
	if strings.Contains(string(status), "\nState:\tZ") {
		return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, ErrZombie)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	lines := 0
	for sc.Scan() {
		lines++
		link, ok := mapFile(pid, sc.Text())
		if !ok {
			continue
		}
		// The exact name comes from the link, not from the text (spaces, escaped newlines).
		name, err := os.Readlink(link)
		denied := errors.Is(err, os.ErrPermission)
		if denied {
			// map_files is root's (0500) and following it takes CAP_SYS_ADMIN or
			// CAP_CHECKPOINT_RESTORE, which a tracer run with only its capability set lacks: the
			// name then comes from the text (a name it mis-reads fails the identity check below).
			name = mapName(sc.Text())
		} else if err != nil {
			continue
		}
		if !loader.IsLibcName(name) {
			continue
		}
		root := procRoot(uint32(pid))
		key, err := loader.FileKey(link)
		if denied || errors.Is(err, os.ErrPermission) {
			// Open the name in the process's root instead, and take it only if it is the very
			// file mapped (the device and inode the line shows).
			lf, err := libcByName(root, name, sc.Text())
			if err != nil {
				return libcRef{}, fmt.Errorf("attaching to pid %d: opening its libc %s: %w", pid, name, err)
			}
			key, _ = loader.FileKey(fdPath(lf))
			if skip[key] {
				lf.Close()
				return libcRef{key: key}, nil
			}
			return newLibcRef(lf, name, root, key), nil
		}
		if err != nil {
			continue
		}
		if skip[key] {
			return libcRef{key: key}, nil
		}
		lf, err := safeopen.Open(link, safeopen.Options{Follow: true})
		if err != nil {
			return libcRef{}, fmt.Errorf("attaching to pid %d: opening its libc %s: %w", pid, name, err)
		}
		return newLibcRef(lf, name, root, key), nil
	}
	if lines == 0 {
		if strings.Contains(string(status), "\nKthread:\t1") || !hasExe(pid) {
			return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, ErrKernelThread)
		}
		return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, ErrExitedAttach)
	}
	if loader.IsGo(fmt.Sprintf("/proc/%d/exe", pid)) {
		return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, loader.ErrGoProgram)
	}
	return libcRef{}, fmt.Errorf("attaching to pid %d: %w", pid, ErrNoLibcMapped)
}

func newLibcRef(lf *os.File, name, root, key string) libcRef {
	if isHostRoot(root) {
		root = ""
	}
	return libcRef{f: lf, name: strings.TrimSuffix(name, " (deleted)"), root: root, key: key}
}

func fdPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// libcByName opens a mapped file by its name under the process's root, not following a final
// symlink, and keeps it only if its device and inode are those of the maps line.
func libcByName(root, name, line string) (*os.File, error) {
	fields := strings.Fields(line)
	var major, minor, ino uint64
	if len(fields) < 6 {
		return nil, fmt.Errorf("unreadable maps line")
	}
	if _, err := fmt.Sscanf(fields[3]+" "+fields[4], "%x:%x %d", &major, &minor, &ino); err != nil {
		return nil, fmt.Errorf("unreadable maps line: %w", err)
	}
	f, err := safeopen.Open(filepath.Join(root, name), safeopen.Options{})
	if err != nil {
		return nil, err
	}
	if key, err := loader.FileKey(fdPath(f)); err != nil || key != procmaps.KernelDevKey(uint32(major<<20|minor), ino) {
		f.Close()
		return nil, fmt.Errorf("%s is not the file mapped (device and inode differ)", name)
	}
	return f, nil
}

// mapName is the path of a maps line as text: what follows the five fields before it.
func mapName(line string) string {
	rest := line
	for range 5 {
		rest = strings.TrimLeft(rest, " ")
		i := strings.IndexByte(rest, ' ')
		if i < 0 {
			return ""
		}
		rest = rest[i:]
	}
	return strings.TrimLeft(rest, " ")
}

// mapFile returns the map_files link of a /proc/PID/maps line that maps a file.
func mapFile(pid int, line string) (string, bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 || fields[4] == "0" {
		return "", false
	}
	return fmt.Sprintf("/proc/%d/map_files/%s", pid, fields[0]), true
}

func hasExe(pid int) bool {
	_, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil
}

// Attach traces running processes until ctx is done, the duration passes, or they all exit.
func Attach(ctx context.Context, pids []int, duration time.Duration, opts Options) (*report.Report, error) {
	var libcs []libcRef
	for _, pid := range pids {
		l, err := libcOf(pid, nil)
		if err != nil {
			closeRefs(libcs)
			return nil, err
		}
		libcs = append(libcs, l)
	}
	s, err := start(opts, true)
	if err != nil {
		closeRefs(libcs)
		return nil, err
	}
	mods, err := s.adoptLibcs(libcs)
	if err != nil {
		s.abort()
		return nil, err
	}
	if err := s.attachNamed(); err != nil {
		s.abort()
		return nil, err
	}
	// Every mapped module gets its unwind table before the probes attach: complete stacks from
	// the first event.
	var loading []chan struct{}
	for _, pid := range pids {
		if err := s.maps.Load(uint32(pid)); err != nil {
			s.abort()
			return nil, fmt.Errorf("attaching to pid %d: %w", pid, ErrExitedAttach)
		}
		for _, m := range s.maps.ModulesOf(uint32(pid)) {
			loading = append(loading, s.tables.wantWhole(m, true))
		}
	}
	if !wait(loading, tableWait) {
		s.warn("unwind tables were still loading when tracing began: the first stacks may be copied or cut")
	}
	for i, pid := range pids {
		if err := s.attachModule(mods[i]); err != nil {
			s.abort()
			return nil, err
		}
		if err := s.attachAllocators(pid); err != nil {
			s.abort()
			return nil, err
		}
		if err := s.tracer.AddTarget(pid, false); err != nil {
			s.abort()
			return nil, err
		}
		// Named now: count mode's calls come at the end, without a name, and no exec will tell.
		s.bmu.Lock()
		s.describe(uint32(pid))
		s.bmu.Unlock()
	}
	s.meta.Command = []string{"attach", "--pid", joinInts(pids)}
	s.waitFor(ctx, duration, func() bool {
		for _, pid := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				return false
			}
		}
		return true
	})
	return s.finish()
}

// Trace traces every process on the machine until ctx is done or the duration passes.
func Trace(ctx context.Context, duration time.Duration, opts Options) (*report.Report, error) {
	libcs, failed := systemLibcs()
	if len(libcs) == 0 {
		return nil, errors.New("tracing system-wide: no process maps a libc")
	}
	s, err := start(opts, false)
	if err != nil {
		closeRefs(libcs)
		return nil, err
	}
	for _, msg := range failed {
		s.warn("%s", msg)
	}
	skip := map[string]bool{}
	for _, l := range libcs {
		skip[l.key] = true
		m, err := s.maps.AddOpened(l.f, l.name, l.root)
		if err == nil {
			err = s.attachModule(m)
		}
		if err != nil {
			s.warn("cannot probe %s: %v", l.name, err)
		}
	}
	s.attachRunningAllocators(skip) // jemalloc, tcmalloc, mimalloc mapped before the trace began
	s.meta.Command = []string{"trace"}
	s.waitFor(ctx, duration, func() bool { return false })
	return s.finish()
}

// systemLibcs opens one libc per distinct file mapped by any process (containers included);
// failed says which could not be opened (a process's own file that is not a libc it can run).
func systemLibcs() (out []libcRef, failed []string) {
	seen := map[string]bool{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		l, err := libcOf(pid, seen)
		if err != nil {
			if errors.Is(err, safeopen.ErrNotRegular) || errors.Is(err, safeopen.ErrTooLarge) {
				failed = append(failed, err.Error())
			}
			continue
		}
		if seen[l.key] {
			continue
		}
		seen[l.key] = true
		out = append(out, l)
	}
	return out, failed
}

// adoptLibcs hands the held libcs to the session's table, in order; on error all are closed.
func (s *Session) adoptLibcs(refs []libcRef) ([]*procmaps.Module, error) {
	var mods []*procmaps.Module
	for i, l := range refs {
		m, err := s.maps.AddOpened(l.f, l.name, l.root)
		if err != nil {
			closeRefs(refs[i+1:])
			return nil, fmt.Errorf("opening libc %s: %w", l.name, err)
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// waitFor blocks until ctx is done, the duration (if any) passes, or done() holds (polled).
func (s *Session) waitFor(ctx context.Context, duration time.Duration, done func() bool) {
	if s.opts.OnTracing != nil {
		s.opts.OnTracing()
	}
	var deadline <-chan time.Time
	if duration > 0 {
		timer := time.NewTimer(duration)
		defer timer.Stop()
		deadline = timer.C
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-tick.C:
			if done() {
				return
			}
		}
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
