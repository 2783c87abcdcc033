package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// markerEnv is set, with a value unique to one udstrace run, in that run's environment: every process
// udstrace starts inherits it, so the run's processes are found wherever they were reparented.
const markerEnv = "UDSTRACE_STRESS_RUN"

// env is what every check shares.
type env struct {
	udstrace  string // ./udstrace, absolute
	bin       string // workload/bin, absolute
	allocount string // workload/bin/allocount.so
	work      string // scratch directory of this stress run
	progNames map[string]bool
}

func setup() (*env, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (BPF, bpftool, other users' processes): run it with sudo, e.g. make stress")
	}
	e := &env{udstrace: abs("udstrace"), bin: abs("workload/bin")}
	e.allocount = filepath.Join(e.bin, "allocount.so")
	for _, f := range []string{e.udstrace, e.allocount, filepath.Join(e.bin, "allocpattern")} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%s missing: run `make build` in the repository root first, and run stress from there", f)
		}
	}
	for _, tool := range []string{"bpftool", "cc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: install it (apt-get install bpftool gcc)", tool)
		}
	}
	names, err := programNames()
	if err != nil {
		return nil, err
	}
	e.progNames = names
	e.work, err = os.MkdirTemp("", "udstrace-stress-")
	if err != nil {
		return nil, err
	}
	// The workload runs as nobody in some checks: let it reach what it needs in here.
	if err := os.Chmod(e.work, 0o755); err != nil {
		return nil, err
	}
	return e, nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// compile builds a C program in the scratch directory and returns its path.
func (e *env) compile(name, src string, flags ...string) (string, error) {
	dir := filepath.Join(e.work, "src")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(e.work, name)
	args := append([]string{"-O2", "-g", "-fno-omit-frame-pointer", "-Wall", "-o", out, c}, flags...)
	if b, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("compiling %s: %v\n%s", name, err, b)
	}
	return out, nil
}

// ---- running udstrace ----

// udRun is one udstrace process being watched.
type udRun struct {
	name    string
	cmd     *exec.Cmd
	marker  string
	logPath string // stdout and stderr
	begun   time.Time
	end     time.Time
	pid     int
	ids     bpfIDs // BPF objects seen in its descriptors while it ran
	rss     []int64
	stop    chan struct{}
	sampled chan struct{}
}

// startUd starts udstrace with args; its output goes to a log file in the scratch directory.
// The BPF objects in its descriptors are sampled every 50 ms, and VmRSS every second when rssEvery.
func (e *env) startUd(name string, args []string, extraEnv []string, rssEvery bool) (*udRun, error) {
	r := &udRun{name: name, marker: name + "-" + randomHex(6), logPath: filepath.Join(e.work, name+".log"),
		ids: newIDs(), stop: make(chan struct{}), sampled: make(chan struct{})}
	log, err := os.Create(r.logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	r.cmd = exec.Command(e.udstrace, args...)
	r.cmd.Env = append(append(os.Environ(), markerEnv+"="+r.marker), extraEnv...)
	r.cmd.Stdout, r.cmd.Stderr = log, log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r.begun = time.Now()
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	r.pid = r.cmd.Process.Pid
	go r.sample(rssEvery)
	return r, nil
}

func (r *udRun) sample(rssEvery bool) {
	defer close(r.sampled)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	lastRSS := time.Time{}
	for {
		r.ids.addFrom(r.pid)
		if rssEvery && time.Since(lastRSS) >= time.Second {
			if kb, ok := vmRSS(r.pid); ok {
				r.rss = append(r.rss, kb)
			}
			lastRSS = time.Now()
		}
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
	}
}

// wait waits for udstrace to end, killing it after timeout. It returns the exit code (-1 when a
// signal ended it) and the signal.
func (r *udRun) wait(timeout time.Duration) (code int, sig syscall.Signal, timedOut bool) {
	done := make(chan struct{})
	go func() { r.cmd.Wait(); r.end = time.Now(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		timedOut = true
		r.cmd.Process.Kill()
		<-done
	}
	close(r.stop)
	<-r.sampled
	ws := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return -1, ws.Signal(), timedOut
	}
	return ws.ExitStatus(), 0, timedOut
}

func (r *udRun) ended() time.Time { return r.end }

func (r *udRun) log() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// lastLines returns the last n lines of the log, for error details.
func (r *udRun) lastLines(n int) string {
	lines := strings.Split(strings.TrimRight(r.log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func vmRSS(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, err := strconv.ParseInt(f[1], 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

// markedProcs lists the live processes carrying a run's marker: "pid comm (user)".
func markedProcs(marker string) []string {
	var out []string
	want := []byte(markerEnv + "=" + marker + "\x00")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/environ")
		if err != nil || !containsBytes(b, want) {
			continue
		}
		status, _ := os.ReadFile(d + "/status")
		if strings.Contains(string(status), "\nState:\tZ") {
			continue // a zombie runs nothing; its parent will reap it
		}
		comm, _ := os.ReadFile(d + "/comm")
		uid := ""
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "Uid:") {
				if f := strings.Fields(l); len(f) > 1 {
					uid = f[1]
				}
			}
		}
		out = append(out, fmt.Sprintf("%s %s (uid %s)", filepath.Base(d), strings.TrimSpace(string(comm)), uid))
	}
	return out
}

func containsBytes(b, sub []byte) bool { return strings.Contains(string(b), string(sub)) }
