package fileattack

import (
	"bufio"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
)

// Racer is the echo-binaries attacker (cmd/udstrace/testdata/racer.c) running as nobody: it
// watches /tmp and tries to replace or move the workload's binaries and directories the moment
// they appear. The CLI test and the stress check share it.
type Racer struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
}

// RaceResult is what the racer reports when stopped: the directories it raced, its attempts, and
// the lines of any attempt that won.
type RaceResult struct {
	Dirs, Attempts, Wins int
	Won                  []string
	Summary              string
}

// StartRacer starts the compiled racer as nobody and waits until it watches.
func StartRacer(racer string) (*Racer, error) {
	cmd := exec.Command(racer)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: NobodyUID, Gid: NobodyGID, Groups: []uint32{}}, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("starting the racer: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the racer: %w", err)
	}
	r := &Racer{cmd: cmd, lines: bufio.NewScanner(out)}
	if !r.lines.Scan() || r.lines.Text() != "watching" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("starting the racer: it said %q, not watching", r.lines.Text())
	}
	return r, nil
}

// Stop ends the racer and reads its account.
func (r *Racer) Stop() RaceResult {
	r.cmd.Process.Signal(syscall.SIGTERM)
	var res RaceResult
	for r.lines.Scan() {
		if strings.HasPrefix(r.lines.Text(), "WON") {
			res.Won = append(res.Won, r.lines.Text())
		} else {
			res.Summary = r.lines.Text()
		}
	}
	r.cmd.Wait()
	fmt.Sscanf(res.Summary, "dirs %d attempts %d won %d", &res.Dirs, &res.Attempts, &res.Wins)
	return res
}
