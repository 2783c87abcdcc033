package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var bpftraceCount = regexp.MustCompile(`@\[uprobe:[^\]]*:(malloc|free)\]: (\d+)`)

// bpftraceRun counts calls of funcs (e.g. "malloc", "free") with bpftrace uprobes.
func (e *env) bpftraceRun(funcs ...string) func(context.Context, int) (sample, error) {
	return func(ctx context.Context, pairs int) (sample, error) { return e.runBpftrace(ctx, pairs, funcs) }
}

// runBpftrace counts funcs with bpftrace uprobes while allocbench runs.
func (e *env) runBpftrace(ctx context.Context, pairs int, funcs []string) (sample, error) {
	s := newSample()
	var parseErr error
	counts, ru, err := e.underBpftrace(ctx, funcs, `comm == "allocbench"`, func() error {
		out, _, err := e.runChild(ctx, e.tmp, nil, append([]string{e.bench}, e.args(pairs)...)...)
		if err != nil {
			return err
		}
		_, parseErr = parseBench(out, &s)
		return nil
	})
	if err == nil {
		err = parseErr
	}
	if err != nil {
		return s, err
	}
	s.malloc, s.free = counts["malloc"], counts["free"]
	if len(funcs) == 1 {
		s.free = -1 // not traced
	}
	s.tracerCPU, s.rssKiB = cpuSec(ru), ru.Maxrss
	return s, nil
}

// underBpftrace counts calls of funcs in libc with count-only bpftrace uprobes
// whose predicate is filter, while run runs, and returns the counts by function
// and bpftrace's rusage. The uprobes are on libc itself, so they fire in every
// process on the machine: the filter keeps other processes out of the counts.
func (e *env) underBpftrace(ctx context.Context, funcs []string, filter string, run func() error) (map[string]int64, *syscall.Rusage, error) {
	var probes []string
	for _, f := range funcs {
		probes = append(probes, fmt.Sprintf("uprobe:%s:%s", e.libc, f))
	}
	prog := fmt.Sprintf(`%s /%s/ { @[probe] = count(); }`, strings.Join(probes, ","), filter)
	cmd := exec.Command("bpftrace", "-e", prog)
	inGroup(cmd)
	cmd.Cancel = nil
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, nil, err
	}
	pw.Close()
	waited := make(chan error, 1)
	exited := false
	defer func() { // never leave bpftrace running
		if !exited {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-waited
		}
	}()

	attached := make(chan struct{})
	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		seen := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !seen && strings.HasPrefix(sc.Text(), "Attaching ") {
				seen = true
				close(attached)
			}
		}
		io.Copy(io.Discard, pr)
		pr.Close()
	}()
	go func() { <-readDone; waited <- cmd.Wait() }()

	select {
	case <-attached:
	case err := <-waited:
		exited = true
		<-readDone
		return nil, nil, fmt.Errorf("bpftrace exited before attaching: %v: %s", err, lastLine(out.String()))
	case <-time.After(e.timeout):
		return nil, nil, errors.New("bpftrace did not attach in time")
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	// "Attaching N probes..." is printed as attaching starts; give the
	// uprobes a moment. The counts column shows any call missed anyway.
	time.Sleep(500 * time.Millisecond)

	if err := run(); err != nil {
		return nil, nil, err
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
	select {
	case err = <-waited:
		exited = true
	case <-time.After(e.timeout):
		return nil, nil, errors.New("bpftrace did not exit after SIGINT")
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("bpftrace: %v: %s", err, lastLine(out.String()))
	}
	counts := map[string]int64{}
	for _, f := range funcs {
		counts[f] = 0
	}
	for _, m := range bpftraceCount.FindAllStringSubmatch(out.String(), -1) {
		n, _ := strconv.ParseInt(m[2], 10, 64)
		counts[m[1]] += n
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return nil, nil, errors.New("bpftrace: no rusage")
	}
	return counts, ru, nil
}
