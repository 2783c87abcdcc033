package session

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/udstrace/udstrace/pkg/launch"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/workload"
)

// runEcho runs the AF_UNIX echo experiment: a server, a raw-syscall client and a stdio client.
func runEcho(ctx context.Context, opts Options) (*report.Report, error) {
	if opts.Messages <= 0 {
		opts.Messages = 3
	}
	if opts.Size < 0 || opts.Size > 1<<20 {
		return nil, fmt.Errorf("choosing message size: %d is not in [0, 1048576]", opts.Size)
	}
	dir, err := os.MkdirTemp("", "udstrace-echo-")
	if err != nil {
		return nil, fmt.Errorf("creating workload directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("securing workload directory: %w", err)
	}
	bins, err := workload.Extract(dir)
	if err != nil {
		return nil, err
	}
	libc, err := loader.ResolveLibc(bins.Client)
	if err != nil {
		return nil, err
	}
	s, err := start(opts, true)
	if err != nil {
		return nil, err
	}
	if err := s.attachLibc(libc); err != nil {
		s.abort()
		return nil, err
	}
	s.meta.Command = []string{"workload", "echo", "--messages", strconv.Itoa(opts.Messages), "--size", strconv.Itoa(opts.Size)}
	if err := s.echo(ctx, bins, filepath.Join(dir, "echo.sock"), opts); err != nil {
		s.abort()
		return nil, err
	}
	return s.finish()
}

func (s *Session) echo(ctx context.Context, bins workload.Paths, sock string, opts Options) error {
	out := opts.Stdout
	if out == nil {
		out = io.Discard
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("starting echo server: %w", err)
	}
	defer ready.Close()
	server, err := s.launch([]string{bins.Server, sock, "2"}, launch.Options{Stdout: readyW, Stderr: opts.Stderr}, "server")
	readyW.Close()
	if err != nil {
		return err
	}
	serverDone := make(chan struct{})
	defer func() {
		select {
		case <-serverDone:
		default:
			server.Cmd.Process.Kill()
		}
	}()
	if err := waitReady(ready, 10*time.Second); err != nil {
		server.Cmd.Process.Kill()
		server.Cmd.Wait()
		close(serverDone)
		return err
	}
	msgs, size := strconv.Itoa(opts.Messages), strconv.Itoa(opts.Size)
	for _, mode := range []string{"raw", "stdio"} {
		code, err := s.runOne(ctx, []string{bins.Client, mode, sock, msgs, size},
			launch.Options{Stdout: out, Stderr: opts.Stderr}, report.Role("client-"+mode))
		if err != nil {
			return err
		}
		if code != 0 {
			s.warn("%s client exited with status %d", mode, code)
		}
	}
	code, err := s.wait(ctx, server)
	close(serverDone)
	if err != nil {
		return err
	}
	if code != 0 {
		s.warn("echo server exited with status %d", code)
	}
	return nil
}

// waitReady waits for the server's "ready" line, sent once it listens.
func waitReady(r *os.File, timeout time.Duration) error {
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(r).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "ready\n" {
			return fmt.Errorf("starting echo server: it exited before listening")
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("starting echo server: not listening after %s", timeout)
	}
}
