package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/internal/fileattack"
)

// checkProcs checks what a traced command and the workload's user can do to udstrace's processes,
// with a CPU hog on every core beside them: SIGKILL of udstrace, 20 times, leaves no process of the
// command's group; and an attacker running as nobody, racing 8 echo runs, never replaces a binary.
func checkProcs(e *env) []*result {
	stopHog := cpuHog(2)
	defer stopHog()
	return []*result{e.killLeavesNothing(20), e.binaryRace(8)}
}

// cpuHog keeps n shell loops spinning until the returned function is called.
func cpuHog(n int) func() {
	var hogs []*exec.Cmd
	for range n {
		c := exec.Command("sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if c.Start() == nil {
			hogs = append(hogs, c)
		}
	}
	return func() {
		for _, c := range hogs {
			c.Process.Kill()
			c.Wait()
		}
	}
}

// killLeavesNothing SIGKILLs udstrace while `sh -c 'sleep 300; true'` runs under it, runs times.
func (e *env) killLeavesNothing(runs int) *result {
	res := newResult("procs: kill", fmt.Sprintf("SIGKILL of run -- sh -c 'sleep 300; true', %d times, CPU hog beside", runs))
	progress("procs: %s", res.tried)
	clean := 0
	for i := range runs {
		u, err := e.startUd(fmt.Sprintf("procs-kill-%d", i), []string{"run", "--format", "json", "--", "sh", "-c", "sleep 300; true"}, nil, false)
		if err != nil {
			res.fail("starting udstrace: %v", err)
			return res
		}
		if !waitForComm(u.marker, "sleep", 30*time.Second) {
			res.fail("run %d: sleep never ran under udstrace: %s", i, u.lastLines(3))
		}
		u.cmd.Process.Signal(syscall.SIGKILL)
		u.wait(30 * time.Second)
		deadline := time.Now().Add(5 * time.Second)
		left := markedProcs(u.marker)
		for len(left) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			left = markedProcs(u.marker)
		}
		if len(left) > 0 {
			res.fail("run %d: 5 s after the SIGKILL, still alive: %s", i, strings.Join(left, ", "))
			for _, p := range left { // do not let one failure spoil the next runs
				var pid int
				fmt.Sscan(p, &pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
			continue
		}
		clean++
	}
	res.note("%d of %d runs left no process of the run (by environment marker in /proc)", clean, runs)
	return res
}

// binaryRace runs the echo workload runs times with cmd/udstrace/testdata/racer.c running as nobody.
func (e *env) binaryRace(runs int) *result {
	res := newResult("procs: race", fmt.Sprintf("nobody racing %d echo runs to replace the binaries, CPU hog beside", runs))
	progress("procs: %s", res.tried)
	src, err := os.ReadFile("cmd/udstrace/testdata/racer.c")
	if err != nil {
		res.fail("%v (run stress from the repository root)", err)
		return res
	}
	racer, err := e.compile("racer", string(src))
	if err != nil {
		res.fail("%v", err)
		return res
	}
	var attempts, held int
	for i := range runs {
		att, err := fileattack.StartRacer(racer)
		if err != nil {
			res.fail("%v", err)
			return res
		}
		report := filepath.Join(e.work, fmt.Sprintf("race-%d.json", i))
		u, err := e.startUd(fmt.Sprintf("procs-race-%d", i), []string{"run", "--workload", "echo", "--messages", "200", "--format", "json", "-o", report}, nil, false)
		if err != nil {
			att.Stop()
			res.fail("starting udstrace: %v", err)
			return res
		}
		code, _, timedOut := u.wait(60 * time.Second)
		race := att.Stop()
		attempts += race.Attempts
		switch {
		case timedOut || code != 0:
			res.fail("run %d: udstrace exit %d (timed out %v): %s", i, code, timedOut, u.lastLines(3))
		case len(race.Won) > 0:
			res.fail("run %d: the attacker won: %s", i, strings.Join(race.Won, "; "))
		case race.Dirs < 1 || race.Attempts == 0:
			res.fail("run %d: the attacker never raced the run (%q)", i, race.Summary)
		default:
			if msg := verdictHolds(report); msg != "" {
				res.fail("run %d: %s", i, msg)
			} else {
				held++
			}
		}
	}
	res.note("%d of %d runs: every one of %d attempts failed and the verdict held", held, runs, attempts)
	return res
}

// verdictHolds checks an echo report: three workload processes that exited 0 and the verdict holding.
func verdictHolds(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var rep struct {
		Processes []struct {
			Role     string `json:"role"`
			ExitCode *int   `json:"exit_code"`
		} `json:"processes"`
		SocketPath struct {
			Holds bool `json:"holds"`
		} `json:"socket_path"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return "report: " + err.Error()
	}
	ok := 0
	for _, p := range rep.Processes {
		if p.Role != "" && p.ExitCode != nil && *p.ExitCode == 0 {
			ok++
		}
	}
	if ok != 3 || !rep.SocketPath.Holds {
		return fmt.Sprintf("%d workload processes exited 0 (want 3), verdict holds=%v", ok, rep.SocketPath.Holds)
	}
	return ""
}
