// Package launch starts traced commands held just before exec, so tracing covers their first instruction,
// each in a process group that ends with the run or with udstrace (see group.go), and keeps the scratch
// directory of a run from outliving udstrace (see Janitor).
package launch

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// helperArg marks udstrace re-executed as the hold-then-exec helper (or, with janitorArg after it, as the janitor).
const helperArg = "__udstrace_exec"

// selfExe is how a child finds udstrace's own binary: the magic link needs no search permission on the
// directories above the binary, so a helper that already dropped to an unprivileged user can still exec it.
const selfExe = "/proc/self/exe"

// IsHelper reports whether this process was started as the helper.
func IsHelper() bool { return len(os.Args) > 2 && os.Args[1] == helperArg }

// RunHelper says it runs on fd 4, waits for the go-ahead on fd 3, then replaces itself with the command;
// it returns only on failure. Started as the janitor instead, it does the janitor's work and exits.
func RunHelper() error {
	switch os.Args[2] {
	case janitorArg:
		return runJanitor(os.Args[3:])
	case keeperArg:
		return runKeeper()
	}
	if running := os.NewFile(4, "running"); running != nil {
		running.Write([]byte{1})
		running.Close()
	}
	release := os.NewFile(3, "release")
	var b [1]byte
	if n, _ := release.Read(b[:]); n != 1 {
		return errors.New("udstrace went away before the command could start")
	}
	release.Close()
	return execCommand(parseHelperArgs(os.Args[2:]), os.Environ())
}

// Options for a launched process.
type Options struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Dir            string
	Env            []string
	Credential     *syscall.Credential // run as another user (nil: as udstrace)
	// DeathSignal is what the process gets when udstrace dies, however it dies (default SIGKILL).
	// The kernel keeps it across the credential change (Go sets it after setuid) and across the exec of
	// a binary that is not set-user-ID; it is sent when the udstrace thread that started the process ends.
	DeathSignal syscall.Signal
	// Pinned, when set, is the file argv[0] must still be when the helper execs it (see Pin).
	Pinned *FileID
	// Path, when set, is the file to exec (argv[0] is then only the name the command is given).
	Path string
	// NoASLR runs the command with address space randomization off, as gdb does: two runs of a
	// program that hashes pointers (gcc's cc1) then make the same calls.
	NoASLR bool
}

// Process is a command held before exec until Release. It leads a process group of its own.
type Process struct {
	Cmd     *exec.Cmd
	release *os.File
	keeper  *keeper
	name    string // argv[0]
}

// Name is the command's argv[0].
func (p *Process) Name() string { return p.name }

// Start starts argv held before exec; its PID is known and stays the same across the exec.
//
// It returns once the helper runs: the kernel has then finished the helper's own exec, exec hooks
// included, so a tracer that puts the PID in scope after Start sees the command's exec and nothing of
// the helper. (os/exec's Start returns as soon as the exec is past the point of no return, before the
// kernel's sched_process_exec hooks have run for it: a PID added then was taken for traced from the
// helper's own exec, and the helper's Go runtime was reported as the command's mmaps and mallocs.)
func Start(argv []string, opts Options) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("starting command: empty command line")
	}
	if _, err := exec.LookPath(cmp.Or(opts.Path, argv[0])); err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	cmd := exec.Command(selfExe, helperArgs(argv, opts)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	cmd.Dir, cmd.Env = opts.Dir, opts.Env
	runR, runW, err := os.Pipe()
	if err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	defer runR.Close()
	cmd.ExtraFiles = []*os.File{r, runW}
	sig := opts.DeathSignal
	if sig == 0 {
		sig = syscall.SIGKILL
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: opts.Credential, Pdeathsig: sig, Setpgid: true}
	err = cmd.Start()
	r.Close()
	runW.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &Process{Cmd: cmd, release: w, name: argv[0]}
	runR.SetReadDeadline(time.Now().Add(30 * time.Second))
	var b [1]byte
	if n, err := runR.Read(b[:]); n != 1 {
		p.Abort()
		return nil, fmt.Errorf("starting %s: udstrace's launch helper did not start: %v", argv[0], err)
	}
	// The helper has exec'd, so it leads its group by now (os/exec's child sets it before the exec).
	if p.keeper, err = startKeeper(p.PID()); err != nil {
		p.Abort()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	return p, nil
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

// Abort kills a process that was never released, with its group, and reaps it.
func (p *Process) Abort() {
	p.release.Close()
	_ = p.Signal(syscall.SIGKILL)
	_ = p.Cmd.Process.Kill()
	_ = p.Cmd.Wait()
	p.keeper.close(false)
	p.keeper = nil
}

// janitorArg, after helperArg, starts udstrace as the janitor.
const janitorArg = "__udstrace_janitor"

// workDir names the janitor's directory's subdirectory for the workload user.
const workDir = "work"

// Janitor owns a private scratch directory for the length of a run. It is a helper process, started
// before the directory exists, that creates the directory and removes it, with whatever is in it,
// once udstrace's end of a pipe closes: at Close, but equally when udstrace is SIGKILLed, panics or
// crashes, since the kernel closes the pipe with the process. It sits in a process group of its own
// and ignores SIGINT, SIGTERM and SIGHUP, so Ctrl-C or a signal to udstrace's group does not stop it
// before it has cleaned up. Only udstrace holds the pipe's write end (close-on-exec), so no launched
// process can keep the janitor waiting.
//
// The directory itself is udstrace's (mode 0755), for what the workload may run but not change; its
// subdirectory Work (mode 0700) is the workload user's, for what the workload writes (its socket).
type Janitor struct {
	Dir  string // the directory, mode 0755, owned by udstrace's user
	Work string // Dir/work, mode 0700, owned by the uid and gid given to StartJanitor
	cmd  *exec.Cmd
	hold *os.File // udstrace's end of the pipe; closing it tells the janitor to clean up
}

// StartJanitor starts the janitor, which creates a directory in os.TempDir() named after pattern
// (os.MkdirTemp's rules) and its Work subdirectory, chowns Work to uid:gid (-1: leave as is), and
// reports them.
func StartJanitor(pattern string, uid, gid int) (*Janitor, error) {
	holdR, holdW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("starting the cleanup helper: %w", err)
	}
	dirR, dirW, err := os.Pipe()
	if err != nil {
		holdR.Close()
		holdW.Close()
		return nil, fmt.Errorf("starting the cleanup helper: %w", err)
	}
	cmd := exec.Command(selfExe, helperArg, janitorArg, os.TempDir(), pattern, fmt.Sprint(uid), fmt.Sprint(gid))
	cmd.Stdin, cmd.Stdout = holdR, dirW // stderr: /dev/null, so it holds no pipe of the caller open
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	holdR.Close()
	dirW.Close()
	if err != nil {
		holdW.Close()
		dirR.Close()
		return nil, fmt.Errorf("starting the cleanup helper: %w", err)
	}
	j := &Janitor{cmd: cmd, hold: holdW}
	line := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(dirR, 4096))
		dirR.Close()
		line <- string(b)
	}()
	dir := <-line // the janitor closes its stdout once the directory exists, or exits
	if len(dir) < 2 || dir[len(dir)-1] != '\n' || dir[0] != '/' {
		j.Close()
		msg := dir
		if msg == "" {
			msg = "it exited"
		}
		return nil, fmt.Errorf("creating the workload directory: %s", trimNL(msg))
	}
	j.Dir = dir[:len(dir)-1]
	j.Work = filepath.Join(j.Dir, workDir)
	return j, nil
}

// Close removes the directory now and waits for the janitor to end.
func (j *Janitor) Close() error {
	var err error
	if j.Dir != "" {
		err = os.RemoveAll(j.Dir)
	}
	j.hold.Close()
	if werr := j.cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("cleanup helper: %w", werr)
	}
	return err
}

func trimNL(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}

// runJanitor is the janitor process: args are TMPDIR PATTERN UID GID. It never returns.
func runJanitor(args []string) error {
	if len(args) != 4 {
		return errors.New("janitor: bad arguments")
	}
	// Nothing but the end of stdin may stop it: not Ctrl-C, nor a SIGTERM or SIGHUP meant for udstrace.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGQUIT)
	var uid, gid int
	if _, err := fmt.Sscan(args[2], &uid); err != nil {
		return errors.New("janitor: bad uid")
	}
	if _, err := fmt.Sscan(args[3], &gid); err != nil {
		return errors.New("janitor: bad gid")
	}
	dir, err := os.MkdirTemp(args[0], args[1])
	if err != nil {
		fmt.Fprintf(os.Stdout, "%v\n", err)
		os.Exit(1)
	}
	fail := func(err error) {
		os.RemoveAll(dir)
		fmt.Fprintf(os.Stdout, "%v\n", err)
		os.Exit(1)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		fail(err)
	}
	work := filepath.Join(dir, workDir)
	if err := os.Mkdir(work, 0o700); err != nil {
		fail(err)
	}
	if uid >= 0 || gid >= 0 {
		if err := os.Lchown(work, uid, gid); err != nil {
			fail(fmt.Errorf("giving %s to uid %d: %w", work, uid, err))
		}
	}
	fmt.Fprintf(os.Stdout, "%s\n", dir)
	os.Stdout.Close()
	var b [64]byte
	for {
		if _, err := os.Stdin.Read(b[:]); err != nil {
			break // EOF: udstrace closed its end or is gone
		}
	}
	os.RemoveAll(dir)
	os.Exit(0)
	return nil
}
