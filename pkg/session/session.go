// Package session runs one trace from start to report: the loader, the launched targets, stacks and the report builder.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
)

// Options is everything a trace needs, flat, as the CLI fills it.
type Options struct {
	Command    []string // run: the command to trace
	Workload   string   // run: a built-in workload instead ("echo")
	Messages   int      // echo: messages per client
	Size       int      // echo: bytes per message (0: the classic three strings)
	User       string   // echo: run the workload as this user (default "nobody"; "root" to keep root)
	Stack      string   // "fp", "cfi" or "auto"
	StackBytes uint32   // bytes of user stack copied per event
	RingBytes  uint32
	Follow     bool
	Debug      bool
	Stdout     io.Writer // where the traced commands' output goes
	Stderr     io.Writer
	Log        *slog.Logger
}

// ErrUnknownWorkload names a workload that does not exist.
var ErrUnknownWorkload = errors.New("unknown workload")

// Session is one trace in progress.
type Session struct {
	opts    Options
	tracer  *loader.Tracer
	maps    *procmaps.Table
	builder *report.Builder
	meta    report.Meta
	mu      sync.Mutex // guards roles and warnings, written from the launcher while events flow
	done    chan error
	cancel  context.CancelFunc
}

func stackMode(s string) (loader.StackMode, error) {
	switch s {
	case "", "auto", "cfi":
		return loader.StackCopy, nil
	case "fp":
		return loader.StackFP, nil
	}
	return 0, fmt.Errorf("choosing stack mode: %q is not fp, cfi or auto", s)
}

// start loads the tracer and begins reading events.
func start(opts Options, filter bool) (*Session, error) {
	mode, err := stackMode(opts.Stack)
	if err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	tr, err := loader.Load(loader.Config{
		Filter: filter, Follow: opts.Follow, StackMode: mode, StackBytes: opts.StackBytes,
		RingBytes: opts.RingBytes, Debug: opts.Debug,
	})
	if err != nil {
		return nil, err
	}
	s := &Session{
		opts: opts, tracer: tr, maps: procmaps.New(), builder: report.NewBuilder(report.Options{}),
		done: make(chan error, 1),
	}
	s.meta = report.Meta{Mode: "full", StackMode: stackName(opts.Stack), Start: time.Now(), Roles: map[uint32]report.Role{}}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- tr.Read(ctx, &handler{s: s}) }()
	return s, nil
}

func stackName(s string) string {
	if s == "" {
		return "auto"
	}
	return s
}

// attachLibc probes the libc a program will use.
func (s *Session) attachLibc(path string) error {
	probes, err := s.tracer.AttachLibc(path)
	if err != nil {
		return err
	}
	key, err := loader.FileKey(path)
	if err != nil {
		return err
	}
	offs := map[uint8]uint64{}
	for _, p := range probes {
		offs[uint8(p.Kind)] = p.Offset
	}
	s.maps.SetAllocator(key, offs)
	s.maps.AddFile(path) // open now: processes that map it may be gone before their mappings are read
	s.opts.Log.Debug("attached", "libc", path, "functions", len(probes))
	return nil
}

func (s *Session) warn(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meta.Warnings = append(s.meta.Warnings, fmt.Sprintf(format, args...))
}

func (s *Session) setRole(pid int, role report.Role) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meta.Roles[uint32(pid)] = role
}

// finish stops reading, drains the ring buffer, detaches everything and builds the report.
func (s *Session) finish() (*report.Report, error) {
	s.cancel()
	readErr := <-s.done
	lost, lerr := s.tracer.Lost()
	socks, serr := s.tracer.SocketStats()
	cerr := s.tracer.Close()
	defer s.maps.Close()
	if err := errors.Join(readErr, lerr, serr, cerr); err != nil {
		return nil, err
	}
	for _, st := range socks {
		s.builder.Sockets(st)
	}
	s.meta.End = time.Now()
	s.meta.Lost = report.LostEvents{RingBuffer: lost.RingBuffer, Other: lost.Untracked + lost.Stale, StackTruncated: lost.NoStack}
	if lost.Stale > 0 {
		s.warn("%d allocator calls lost their return probe (state discarded); their allocations are missing", lost.Stale)
	}
	for path, why := range s.maps.Failures {
		s.warn("no symbols for %s: %s", path, why)
	}
	return s.builder.Finish(&symbolizer{maps: s.maps}, s.meta), nil
}

// abort tears down after a failure before any report.
func (s *Session) abort() {
	s.cancel()
	<-s.done
	s.tracer.Close()
	s.maps.Close()
}
