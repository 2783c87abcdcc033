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

	"github.com/udstrace/udstrace/pkg/loader"
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

// libcOf finds the libc a live process maps, as a path reachable from here (through its root).
func libcOf(pid int) (string, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("attaching to pid %d: %w", pid, ErrNoProcess)
		}
		return "", fmt.Errorf("attaching to pid %d: %w", pid, err)
	}
	if strings.Contains(string(status), "\nState:\tZ") {
		return "", fmt.Errorf("attaching to pid %d: %w", pid, ErrZombie)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return "", fmt.Errorf("attaching to pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	lines := 0
	for sc.Scan() {
		lines++
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && loader.IsLibcName(fields[5]) {
			return fmt.Sprintf("/proc/%d/root%s", pid, fields[5]), nil
		}
	}
	if lines == 0 {
		if strings.Contains(string(status), "\nKthread:\t1") || !hasExe(pid) {
			return "", fmt.Errorf("attaching to pid %d: %w", pid, ErrKernelThread)
		}
		return "", fmt.Errorf("attaching to pid %d: %w", pid, ErrExitedAttach)
	}
	if loader.IsGo(fmt.Sprintf("/proc/%d/exe", pid)) {
		return "", fmt.Errorf("attaching to pid %d: %w", pid, loader.ErrGoProgram)
	}
	return "", fmt.Errorf("attaching to pid %d: %w", pid, ErrNoLibcMapped)
}

func hasExe(pid int) bool {
	_, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil
}

// Attach traces running processes until ctx is done, the duration passes, or they all exit.
func Attach(ctx context.Context, pids []int, duration time.Duration, opts Options) (*report.Report, error) {
	var libcs []string
	for _, pid := range pids {
		l, err := libcOf(pid)
		if err != nil {
			return nil, err
		}
		libcs = append(libcs, l)
	}
	s, err := start(opts, true)
	if err != nil {
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
		if err := s.attachLibc(libcs[i]); err != nil {
			s.abort()
			return nil, err
		}
		if err := s.tracer.AddTarget(pid, false); err != nil {
			s.abort()
			return nil, err
		}
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
	libcs := systemLibcs()
	if len(libcs) == 0 {
		return nil, errors.New("tracing system-wide: no process maps a libc")
	}
	s, err := start(opts, false)
	if err != nil {
		return nil, err
	}
	for _, l := range libcs {
		if err := s.attachLibc(l); err != nil {
			s.warn("cannot probe %s: %v", l, err)
		}
	}
	s.meta.Command = []string{"trace"}
	s.waitFor(ctx, duration, func() bool { return false })
	return s.finish()
}

// systemLibcs lists one path per distinct libc file mapped by any process (containers included).
func systemLibcs() []string {
	seen := map[string]bool{}
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		l, err := libcOf(pid)
		if err != nil {
			continue
		}
		key, err := loader.FileKey(l)
		if err != nil || seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, l)
	}
	return out
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
