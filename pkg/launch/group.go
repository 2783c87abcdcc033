package launch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// keeperArg, after helperArg, starts udstrace as a group keeper.
const keeperArg = "__udstrace_keeper"

// A launched command leads a process group of its own, and everything it starts stays in that group
// unless it leaves on purpose (setsid, setpgid). Ending a run ends the group, as timeout(1) does; and
// so that the group dies with udstrace too, however udstrace dies (a SIGKILL cannot be caught), each
// group holds a keeper: udstrace re-executed as a tiny root process that joins the group and waits on
// a pipe from udstrace. When the pipe closes without a word (udstrace is gone), the keeper sends
// SIGKILL to its own group, itself included. Being a member, it also keeps the group's ID from being
// reused before it acts, so the kill cannot reach an unrelated group. It ignores every signal a member
// may send to the group (kill 0), and being root, the members cannot kill it.

// keeperSignals are what the keeper ignores: every signal whose default ends a process, but SIGKILL.
var keeperSignals = []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGPIPE,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGVTALRM, syscall.SIGPROF, syscall.SIGXCPU,
	syscall.SIGXFSZ, syscall.SIGIO, syscall.SIGPWR, syscall.SIGSTKFLT, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU}

// keeperRelease is the byte udstrace sends to a keeper whose group it no longer needs kept: the keeper
// then leaves without killing anything.
const keeperRelease = 'r'

// keeper is udstrace's side of a group keeper.
type keeper struct {
	cmd  *exec.Cmd
	hold *os.File // closing it without keeperRelease kills the group
}

// startKeeper starts a keeper in the process group pgid, which must exist (its leader is held).
func startKeeper(pgid int) (*keeper, error) {
	holdR, holdW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("starting the group keeper: %w", err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		holdR.Close()
		holdW.Close()
		return nil, fmt.Errorf("starting the group keeper: %w", err)
	}
	defer readyR.Close()
	cmd := exec.Command(selfExe, helperArg, keeperArg)
	cmd.Stdin, cmd.Stdout = holdR, readyW // stderr: /dev/null, so it holds no pipe of the caller open
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
	err = cmd.Start()
	holdR.Close()
	readyW.Close()
	if err != nil {
		holdW.Close()
		return nil, fmt.Errorf("starting the group keeper: %w", err)
	}
	k := &keeper{cmd: cmd, hold: holdW}
	// It says it is ready once its signals are ignored: a SIGTERM to the group sent earlier would kill it.
	readyR.SetReadDeadline(time.Now().Add(30 * time.Second))
	var b [1]byte
	if n, err := readyR.Read(b[:]); n != 1 {
		k.close(false)
		return nil, fmt.Errorf("starting the group keeper: it did not start: %v", err)
	}
	return k, nil
}

// close tells the keeper to leave (release: without killing; else: kill the group) and reaps it.
func (k *keeper) close(release bool) {
	if k == nil || k.hold == nil {
		return
	}
	if release {
		k.hold.Write([]byte{keeperRelease})
	}
	k.hold.Close()
	k.hold = nil
	_ = k.cmd.Wait()
}

// runKeeper is the keeper process. It never returns.
func runKeeper() error {
	signal.Ignore(keeperSignals...)
	os.Stdout.Write([]byte{1})
	os.Stdout.Close()
	var b [1]byte
	n, _ := os.Stdin.Read(b[:])
	if n == 1 && b[0] == keeperRelease {
		os.Exit(0)
	}
	// udstrace is gone (or gave up the group): nothing of the group may outlive it.
	syscall.Kill(0, syscall.SIGKILL)
	os.Exit(1)
	return nil
}

// Signal sends sig to the process's whole group.
func (p *Process) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(-p.PID(), sig); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("signalling process group %d: %w", p.PID(), err)
	}
	return nil
}

// Wait waits for the process to end and returns its wait status.
//
// When stop is closed first, the process's group gets SIGTERM; the group then has until grace has
// passed (or kill is closed) to end, leader and members alike, before it gets SIGKILL. interrupted
// says whether stop was acted on. Once the process is reaped its group's keeper leaves; after an
// interruption, whatever is left of the group is killed first.
func (p *Process) Wait(stop, kill <-chan struct{}, grace time.Duration) (ws syscall.WaitStatus, interrupted bool, err error) {
	waited := make(chan error, 1)
	go func() { waited <- p.Cmd.Wait() }()
	select {
	case err = <-waited:
	case <-stop:
		interrupted = true
		p.Signal(syscall.SIGTERM)
		timer := time.NewTimer(grace)
		defer timer.Stop()
		reaped := false
		select {
		case err = <-waited:
			reaped = true
			p.waitGroup(timer.C, kill)
		case <-timer.C:
		case <-kill:
		}
		p.Signal(syscall.SIGKILL) // the keeper dies with the group: that is the end of it
		if !reaped {
			err = <-waited
		}
	}
	p.keeper.close(!interrupted)
	p.keeper = nil
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return 0, interrupted, fmt.Errorf("waiting for process %d: %w", p.PID(), err)
	}
	ws, _ = p.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ws, interrupted, nil
}

// waitGroup waits, polling, until no process but the keeper is left in the group, or a channel fires.
func (p *Process) waitGroup(deadline <-chan time.Time, kill <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(groupMembers(p.PID(), p.keeper.cmd.Process.Pid)) > 0 {
		select {
		case <-deadline:
			return
		case <-kill:
			return
		case <-tick.C:
		}
	}
}

// groupMembers lists the live (not zombie) processes in process group pgid, but skip.
func groupMembers(pgid, skip int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if g, err := strconv.Atoi(fields[2]); err == nil && g == pgid && pid != skip {
			out = append(out, pid)
		}
	}
	return out
}

// ShellStatus is a wait status as a shell's $? tells it: the exit code, or 128+N when killed by
// signal N (strace, valgrind, heaptrack and timeout(1) return a traced command's status so).
func ShellStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// StatusText words a wait status: "exited with status N" or "killed by signal N (SIGNAME)".
func StatusText(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), unix.SignalName(ws.Signal()))
	}
	return fmt.Sprintf("exited with status %d", ws.ExitStatus())
}
