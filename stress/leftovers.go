package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ending is one way for a udstrace run to end.
type ending struct {
	name     string
	tried    string
	args     []string
	env      []string
	waitFor  string         // comm of a traced process to see running before the signal
	signal   syscall.Signal // sent once waitFor runs (0: let udstrace end by itself)
	wantCode int            // expected exit code; -1: killed by the signal
	wantLog  string         // expected in udstrace's output
	skipIf   string         // when wantLog is missing and this is missing too: the feature is absent
}

// fakeLibcSrc maps a file named libc.so.6 that is not a libc (a copy of libm) and waits: udstrace
// finds it as the process's libc and fails to place its probes there, after probing earlier targets.
const fakeLibcSrc = `#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) return 1;
	void *p = mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED) return 1;
	write(1, "ready\n", 6);
	for (;;) pause();
}
`

// spinSrc allocates forever at a modest pace: a long-running traced command.
const spinSrc = `#include <stdlib.h>
#include <time.h>
int main(void) {
	struct timespec ts = {0, 1000000};
	for (;;) {
		void *volatile p = malloc(64);
		free(p);
		nanosleep(&ts, 0);
	}
}
`

func checkLeftovers(e *env) []*result {
	progress("leftovers: preparing targets")
	var rows []*result
	spin, err := e.compile("spin", spinSrc)
	if err != nil {
		r := newResult("leftovers", "compile helper programs")
		r.fail("%v", err)
		return []*result{r}
	}
	long := []string{"run", "--workload", "echo", "--messages", "1000000", "--format", "json"}
	endings := []ending{
		{name: "exit", tried: "echo workload (as nobody), normal exit", args: []string{"run", "--workload", "echo", "--messages", "2000", "--format", "json"}},
		{name: "sigint", tried: "SIGINT mid-trace of echo --messages 1000000", args: long, waitFor: "echo-client", signal: syscall.SIGINT, wantLog: "interrupted"},
		{name: "sigterm", tried: "SIGTERM mid-trace of echo --messages 1000000", args: long, waitFor: "echo-client", signal: syscall.SIGTERM, wantLog: "interrupted"},
		{name: "sigkill-echo", tried: "SIGKILL mid-trace of echo --messages 1000000", args: long, waitFor: "echo-client", signal: syscall.SIGKILL, wantCode: -1},
		{name: "sigkill-run", tried: "SIGKILL mid-trace of run -- a long-running command", args: []string{"run", "--format", "json", "--", spin}, waitFor: "spin", signal: syscall.SIGKILL, wantCode: -1},
		{name: "panic", tried: "panic mid-trace (UDSTRACE_TEST_PANIC=after-attach, echo)", args: long, env: []string{"UDSTRACE_TEST_PANIC=after-attach"},
			wantCode: 2, wantLog: "panic: UDSTRACE_TEST_PANIC", skipIf: "panic:"},
	}
	for _, end := range endings {
		rows = append(rows, e.tryEnding(end, nil))
	}
	rows = append(rows, e.failedAttach()...)
	rows = append(rows, e.serverSigterm(), e.staleDirs())
	rows = append(rows, e.reportFileAfterKill())
	rows = append(rows, e.privileges())
	return rows
}

// tryEnding runs udstrace, ends it the given way, and checks that nothing is left behind.
func (e *env) tryEnding(end ending, extraCheck func(r *result, u *udRun)) *result {
	res := newResult("leftovers: "+end.name, end.tried)
	progress("leftovers: %s", end.tried)
	base, err := currentBPF()
	if err != nil {
		res.fail("%v", err)
		return res
	}
	probesBefore := uprobeEvents()
	u, err := e.startUd("left-"+end.name, end.args, end.env, false)
	if err != nil {
		res.fail("starting udstrace: %v", err)
		return res
	}
	if end.waitFor != "" {
		if !waitForComm(u.marker, end.waitFor, 20*time.Second) {
			res.fail("%s never ran under udstrace: %s", end.waitFor, u.lastLines(3))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if end.signal != 0 {
		u.cmd.Process.Signal(end.signal)
	}
	code, sig, timedOut := u.wait(90 * time.Second)
	switch {
	case timedOut:
		res.fail("udstrace did not end within 90 s (killed)")
	case code != end.wantCode:
		if end.skipIf != "" && !strings.Contains(u.log(), end.skipIf) && !strings.Contains(u.log(), end.wantLog) {
			res.held = "skipped"
			res.note("not implemented: udstrace has no %v hook (exit %d)", end.env, code)
		} else {
			res.fail("exit code %d (signal %v), want %d: %s", code, sig, end.wantCode, u.lastLines(3))
		}
	case end.wantLog != "" && !strings.Contains(u.log(), end.wantLog):
		res.fail("udstrace's output lacks %q: %s", end.wantLog, u.lastLines(3))
	}
	how := fmt.Sprintf("exit code %d", code)
	if code < 0 {
		how = "killed by " + unix.SignalName(sig)
	}
	res.note("udstrace %s after %s; BPF objects it held: %s", how, u.end.Sub(u.begun).Round(10*time.Millisecond), u.ids.count())
	if extraCheck != nil {
		extraCheck(res, u)
	}
	e.nothingLeft(res, u, base.maxProgID(), probesBefore)
	return res
}

func waitForComm(marker, comm string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, p := range markedProcs(marker) {
			if f := strings.Fields(p); len(f) > 1 && f[1] == comm {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// nothingLeft waits up to 15 s for everything the run created to be gone, then says what is not.
func (e *env) nothingLeft(res *result, u *udRun, minProgID int, probesBefore map[string]bool) {
	dirGlob := filepath.Join(os.TempDir(), fmt.Sprintf("udstrace-echo-%d-*", u.pid))
	deadline := time.Now().Add(15 * time.Second)
	var problems []string
	for {
		problems = nil
		st, err := currentBPF()
		if err != nil {
			problems = append(problems, err.Error())
		} else {
			if left := st.remaining(u.ids); len(left) > 0 {
				problems = append(problems, fmt.Sprintf("BPF objects of udstrace still exist: %s", strings.Join(left, ", ")))
			}
			if orph := st.orphans(e.progNames, minProgID); len(orph) > 0 {
				problems = append(problems, fmt.Sprintf("udstrace-named programs held by no process: %v", orph))
			}
		}
		for l := range uprobeEvents() {
			if !probesBefore[l] && (strings.Contains(l, "udstrace") || strings.Contains(l, "ebpf")) {
				problems = append(problems, "uprobe event left in tracefs: "+l)
			}
		}
		if procs := markedProcs(u.marker); len(procs) > 0 {
			problems = append(problems, "processes of the run still alive: "+strings.Join(procs, ", "))
		}
		if dirs, _ := filepath.Glob(dirGlob); len(dirs) > 0 {
			problems = append(problems, "workload directories left: "+strings.Join(dirs, ", "))
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			res.fail("%s", p)
		}
		return
	}
	res.note("all gone within %s of udstrace's end: its BPF objects, uprobe events, processes (by environment marker), %s", time.Since(u.ended()).Round(10*time.Millisecond), dirGlob)
}

// failedAttach makes attach fail before loading anything, and half-way through (second target bad).
func (e *env) failedAttach() []*result {
	var rows []*result
	bad := 999999
	for syscall.Kill(bad, 0) == nil || syscall.Kill(bad, 0) == syscall.EPERM {
		bad--
	}
	rows = append(rows, e.tryEnding(ending{name: "attach-pid1", tried: fmt.Sprintf("attach --pid 1,%d", bad),
		args: []string{"attach", "--pid", fmt.Sprintf("1,%d", bad), "--duration", "5s"}, wantCode: 125}, func(r *result, u *udRun) {
		r.note("udstrace said: %s", u.lastLines(1))
	}))

	res := newResult("leftovers: attach-halfway", "attach --pid A,B: A probed, then B's \"libc\" is not one")
	fake, err := e.compile("fakelibc", fakeLibcSrc, "-static")
	if err != nil {
		res.fail("%v", err)
		return append(rows, res)
	}
	libm := filepath.Join(e.work, "fakelib", "libc.so.6")
	os.MkdirAll(filepath.Dir(libm), 0o755)
	if b, err := os.ReadFile("/lib/x86_64-linux-gnu/libm.so.6"); err != nil || os.WriteFile(libm, b, 0o755) != nil {
		res.fail("copying libm as a fake libc.so.6: %v", err)
		return append(rows, res)
	}
	a := exec.Command("sleep", "600")
	b := exec.Command(fake, libm)
	for _, c := range []*exec.Cmd{a, b} {
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	out, _ := b.StdoutPipe()
	if err := a.Start(); err != nil {
		res.fail("%v", err)
		return append(rows, res)
	}
	defer func() { a.Process.Kill(); a.Wait() }()
	if err := b.Start(); err != nil {
		res.fail("%v", err)
		return append(rows, res)
	}
	defer func() { b.Process.Kill(); b.Wait() }()
	buf := make([]byte, 6)
	out.Read(buf)
	rows = append(rows, e.tryEnding(ending{name: "attach-nopid", tried: fmt.Sprintf("attach --pid A,%d (no such process)", bad),
		args: []string{"attach", "--pid", fmt.Sprintf("%d,%d", a.Process.Pid, bad), "--duration", "5s"}, wantCode: 125, wantLog: "no such process"}, nil))
	rows = append(rows, e.tryEnding(ending{name: "attach-halfway", tried: res.tried,
		args:     []string{"attach", "--pid", fmt.Sprintf("%d,%d", a.Process.Pid, b.Process.Pid), "--duration", "10s"},
		wantCode: 125, wantLog: "no malloc symbol"}, func(r *result, u *udRun) {
		r.note("links seen in udstrace's descriptors before it failed: %d (the kernel hooks alone are 5: sys_enter, sys_exit, exec, fork, exit; A's libc adds 3)", len(u.ids.link))
	}))
	return rows
}

// serverSigterm checks echo-server's own cleanup: SIGTERM (its parent-death signal under udstrace)
// removes the socket, and the server dies of the signal.
func (e *env) serverSigterm() *result {
	res := newResult("leftovers: server-sigterm", "SIGTERM to a listening echo-server")
	progress("leftovers: %s", res.tried)
	dir, _ := os.MkdirTemp(e.work, "sock-")
	sock := filepath.Join(dir, "echo.sock")
	cmd := exec.Command(filepath.Join(e.bin, "echo-server"), sock, "2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		res.fail("%v", err)
		return res
	}
	buf := make([]byte, 6)
	if n, _ := out.Read(buf); string(buf[:n]) != "ready\n" {
		res.fail("server not ready")
	}
	if _, err := os.Lstat(sock); err != nil {
		res.fail("socket not there while listening: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		res.fail("server ended with %v, want killed by SIGTERM", cmd.ProcessState)
	}
	if _, err := os.Lstat(sock); err == nil {
		res.fail("%s survived the SIGTERM", sock)
	} else {
		res.note("socket removed; server %v", cmd.ProcessState)
	}
	return res
}

// staleDirs checks that an echo run removes the directories of dead udstraces, and only those.
func (e *env) staleDirs() *result {
	res := newResult("leftovers: stale-dirs", "echo run with stale udstrace-echo-DEADPID-* dirs present")
	progress("leftovers: %s", res.tried)
	dead := 999998
	for syscall.Kill(dead, 0) == nil || syscall.Kill(dead, 0) == syscall.EPERM {
		dead--
	}
	stale := filepath.Join(os.TempDir(), fmt.Sprintf("udstrace-echo-%d-stress%s", dead, randomHex(3)))
	foreign := filepath.Join(os.TempDir(), fmt.Sprintf("udstrace-echo-%d-stress%s", dead, randomHex(3)))
	for _, d := range []string{stale, foreign} {
		os.Mkdir(d, 0o700)
		os.WriteFile(filepath.Join(d, "echo-client"), []byte("x"), 0o755)
	}
	os.WriteFile(filepath.Join(foreign, "notes.txt"), []byte("not udstrace's"), 0o644)
	defer os.RemoveAll(foreign)
	defer os.RemoveAll(stale)
	u, err := e.startUd("stale", []string{"run", "--workload", "echo", "--format", "json"}, nil, false)
	if err != nil {
		res.fail("%v", err)
		return res
	}
	if code, _, _ := u.wait(60 * time.Second); code != 0 {
		res.fail("udstrace exited %d: %s", code, u.lastLines(3))
	}
	if _, err := os.Lstat(stale); err == nil {
		res.fail("stale %s (dead owner, only workload files) was not removed", stale)
	}
	if _, err := os.Lstat(foreign); err != nil {
		res.fail("%s holds a file udstrace did not make, yet it was removed", foreign)
	}
	if res.held == "yes" {
		res.note("the dead run's directory was removed; one holding a foreign file was kept")
	}
	return res
}

// reportFileAfterKill checks that -o leaves no partial report behind when udstrace is SIGKILLed.
func (e *env) reportFileAfterKill() *result {
	dir := filepath.Join(e.work, "report-kill")
	os.MkdirAll(dir, 0o755)
	out := filepath.Join(dir, "report.json")
	res := e.tryEnding(ending{name: "sigkill-o", tried: "SIGKILL of run -o FILE: no partial report file",
		args:    []string{"run", "--format", "json", "-o", out, "--workload", "echo", "--messages", "1000000"},
		waitFor: "echo-client", signal: syscall.SIGKILL, wantCode: -1}, nil)
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		res.fail("%s left in the -o directory (openOutput's temporary report file survives a SIGKILL)", en.Name())
	}
	return res
}

// privileges checks that the echo workload runs as nobody in a private directory, and that an
// unknown --user is refused with a one-line error that names it and the fix.
func (e *env) privileges() *result {
	res := newResult("privileges", "echo as --user nobody; --user nosuchuser")
	progress("privileges: echo as nobody")
	u, err := e.startUd("priv", []string{"run", "--workload", "echo", "--messages", "100000", "--format", "json"}, nil, false)
	if err != nil {
		res.fail("%v", err)
		return res
	}
	seen := map[string]string{}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && (seen["echo-server"] == "" || seen["echo-client"] == "") {
		for _, p := range markedProcs(u.marker) {
			f := strings.Fields(p)
			if len(f) >= 4 && (f[1] == "echo-server" || f[1] == "echo-client") {
				seen[f[1]] = strings.TrimSuffix(f[3], ")")
			}
		}
		if dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("udstrace-echo-%d-*", u.pid))); len(dirs) == 1 && seen["dir"] == "" {
			fi, err1 := os.Stat(dirs[0])
			wi, err2 := os.Stat(filepath.Join(dirs[0], "work"))
			if err1 == nil && err2 == nil {
				st, wt := fi.Sys().(*syscall.Stat_t), wi.Sys().(*syscall.Stat_t)
				seen["dir"] = fmt.Sprintf("%s mode %v uid %d, work/ mode %v uid %d", filepath.Base(dirs[0]), fi.Mode().Perm(), st.Uid, wi.Mode().Perm(), wt.Uid)
				// The binaries' directory is root's; only the socket's is the workload user's.
				if fi.Mode().Perm() != 0o755 || st.Uid != 0 || wi.Mode().Perm() != 0o700 || wt.Uid != 65534 {
					res.fail("workload directory %s, want mode 0755 owned by root, work/ mode 0700 owned by nobody (65534)", seen["dir"])
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, _, _ := u.wait(120 * time.Second)
	if code != 0 {
		res.fail("udstrace exited %d: %s", code, u.lastLines(3))
	}
	for _, comm := range []string{"echo-server", "echo-client"} {
		if seen[comm] != "65534" {
			res.fail("%s ran as uid %q, want 65534 (nobody)", comm, seen[comm])
		}
	}
	res.note("server uid %s, client uid %s, directory %s", seen["echo-server"], seen["echo-client"], seen["dir"])

	progress("privileges: unknown user")
	cmd := exec.Command(e.udstrace, "run", "--workload", "echo", "--user", "nosuchuser")
	b, err := cmd.CombinedOutput()
	msg := strings.TrimSpace(string(b))
	ee, _ := err.(*exec.ExitError)
	switch {
	case ee == nil || ee.ExitCode() != 125:
		res.fail("--user nosuchuser: exit %v, want 125: %s", err, msg)
	case strings.Count(msg, "\n") != 0 || !strings.Contains(msg, `"nosuchuser"`) || !strings.Contains(msg, "--user USER"):
		res.fail("--user nosuchuser: want one line naming the user and --user USER, got %q", msg)
	default:
		res.note("--user nosuchuser: %s", msg)
	}
	return res
}
