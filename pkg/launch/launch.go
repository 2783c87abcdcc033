// Package launch starts traced commands held just before exec, so tracing covers their first instruction.
package launch

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

// helperArg marks udstrace re-executed as the hold-then-exec helper.
const helperArg = "__udstrace_exec"

// IsHelper reports whether this process was started as the helper.
func IsHelper() bool { return len(os.Args) > 2 && os.Args[1] == helperArg }

// RunHelper waits for the go-ahead on fd 3, then replaces itself with the command; it returns only on failure.
func RunHelper() error {
	release := os.NewFile(3, "release")
	var b [1]byte
	if n, _ := release.Read(b[:]); n != 1 {
		return errors.New("udstrace went away before the command could start")
	}
	release.Close()
	argv := os.Args[2:]
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(path, argv, os.Environ())
}

// Options for a launched process.
type Options struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Dir            string
	Env            []string
	Credential     *syscall.Credential // run as another user (nil: as udstrace)
}

// Process is a command held before exec until Release.
type Process struct {
	Cmd     *exec.Cmd
	release *os.File
}

// Start starts argv held before exec; its PID is known and stays the same across the exec.
func Start(argv []string, opts Options) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("starting command: empty command line")
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding udstrace's own binary: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	cmd := exec.Command(self, append([]string{helperArg}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	cmd.Dir, cmd.Env = opts.Dir, opts.Env
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: opts.Credential, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	r.Close()
	return &Process{Cmd: cmd, release: w}, nil
}

// PID is the process's ID, before and after exec.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Release lets the process exec its command.
func (p *Process) Release() error {
	defer p.release.Close()
	if _, err := p.release.Write([]byte{1}); err != nil {
		return fmt.Errorf("releasing process %d: %w", p.PID(), err)
	}
	return nil
}

// Abort kills a process that was never released and reaps it.
func (p *Process) Abort() {
	p.release.Close()
	_ = p.Cmd.Process.Kill()
	_ = p.Cmd.Wait()
}
