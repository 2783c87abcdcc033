package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/pkg/launch"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
)

// ErrCommandNotFound means the command to trace is not an executable file.
var ErrCommandNotFound = errors.New("command not found")

// Run traces a command (or a built-in workload) from exec to exit, with its children, and returns the report.
func Run(ctx context.Context, opts Options) (*report.Report, error) {
	if opts.Workload != "" {
		if opts.Workload != "echo" {
			return nil, fmt.Errorf("choosing workload %q: %w", opts.Workload, ErrUnknownWorkload)
		}
		return runEcho(ctx, opts)
	}
	if len(opts.Command) == 0 {
		return nil, errors.New("running: no command given")
	}
	path, err := commandPath(opts.Command[0])
	if err != nil {
		return nil, err
	}
	s, err := startFor(path, opts)
	if err != nil {
		return nil, err
	}
	s.meta.Command = opts.Command
	var env []string // nil: udstrace's own environment
	if len(opts.Env) > 0 {
		env = append(os.Environ(), opts.Env...)
	}
	// argv[0] stays as given: programs read it (gcc derives its tools' paths from it).
	lo := launch.Options{Stdout: opts.Stdout, Stderr: opts.Stderr, Env: env, Path: path, NoASLR: opts.NoASLR}
	ws, err := s.runOne(ctx, opts.Command, lo, "")
	if err != nil {
		s.abort()
		return nil, err
	}
	s.opts.Log.Debug("command ended", "status", launch.StatusText(ws))
	status := launch.ShellStatus(ws)
	s.mu.Lock()
	s.meta.CommandStatus = &status
	s.mu.Unlock()
	return s.finish()
}

// commandPath is the file a command name runs, absolute: the kernel reports the path as exec'd,
// and an absolute one still opens after the process is gone.
func commandPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("looking up %s: %w", name, ErrCommandNotFound)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return path, nil
}

// runOne starts one traced process, lets it run to its end (or until ctx is done) and returns its wait status.
func (s *Session) runOne(ctx context.Context, argv []string, lo launch.Options, role report.Role) (syscall.WaitStatus, error) {
	p, err := s.launch(argv, lo, role)
	if err != nil {
		return 0, err
	}
	return s.wait(ctx, p)
}

func (s *Session) launch(argv []string, lo launch.Options, role report.Role) (*launch.Process, error) {
	p, err := launch.Start(argv, lo)
	if err != nil {
		return nil, err
	}
	if err := s.tracer.AddTarget(p.PID(), true); err != nil {
		p.Abort()
		return nil, err
	}
	if role != "" {
		s.setRole(p.PID(), role)
	}
	// The program's own files get their unwind tables before it runs: its stacks are complete
	// from the first allocation.
	if !wait(s.tables.wantImage(argv[0]), tableWait) {
		s.warn("unwind tables of %s were still loading when it started: its first stacks may be copied or cut", argv[0])
	}
	if err := p.Release(); err != nil {
		p.Abort()
		return nil, err
	}
	return p, nil
}

// DefaultKillAfter is how long an interrupted command's process group has between SIGTERM and SIGKILL.
const DefaultKillAfter = 5 * time.Second

// wait reaps p. On ctx's end (Ctrl-C, SIGTERM) it stops p's whole process group first, so nothing is
// left behind: SIGTERM, then SIGKILL after Options.KillAfter, or at once when Options.KillNow closes.
func (s *Session) wait(ctx context.Context, p *launch.Process) (syscall.WaitStatus, error) {
	grace := s.opts.KillAfter
	switch {
	case grace == 0:
		grace = DefaultKillAfter
	case grace < 0:
		grace = 0
	}
	ws, interrupted, err := p.Wait(ctx.Done(), s.opts.KillNow, grace)
	if interrupted {
		s.warnOnce("interrupted: the trace stopped before the command finished")
	}
	if err != nil {
		return 0, fmt.Errorf("waiting for %s: %w", p.Name(), err)
	}
	return ws, nil
}

// startFor starts a session with the allocators the program will bind malloc to already
// probed (LD_PRELOAD's, the program's own, its libraries', libc's), so its first allocation is seen.
func startFor(program string, opts Options) (*Session, error) {
	objs, err := loader.ResolveAllocators(program, append(os.Environ(), opts.Env...))
	if err != nil && opts.Allocator == "" {
		return nil, err // else the named allocator is what is probed (a static binary's own)
	}
	var ahead *loader.Ahead
	if len(objs) > 0 {
		ahead = loader.FindAllocatorAhead(objs[0]) // on the other core, while the programs load
	}
	s, err := start(opts, true)
	if err != nil {
		return nil, err
	}
	if ahead != nil {
		s.tracer.UseAhead(ahead)
	}
	if err := s.attachNamed(); err != nil {
		s.abort()
		return nil, err
	}
	for _, obj := range objs {
		if err := s.attachAllocator(obj); err != nil {
			s.abort()
			return nil, err
		}
	}
	return s, nil
}

// warnOnce adds a warning unless it is there already.
func (s *Session) warnOnce(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.meta.Warnings, msg) {
		s.meta.Warnings = append(s.meta.Warnings, msg)
	}
}
