package main

import (
	"encoding/json"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestExitStatusIsTheCommands: run -- COMMAND exits with the command's own status, a signal death
// as 128+N, as strace, valgrind and heaptrack do; the report (JSON command_status) says the same,
// and the shell that ran the command is the oracle for the figure.
func TestExitStatusIsTheCommands(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	for _, c := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 3", 3},
		{"exit 255", 255},
		{"kill -TERM $$", 128 + 15},
		{"kill -KILL $$", 128 + 9},
	} {
		stdout, stderr, code := runCLI(t, bin, "run", "--format", "json", "--", "sh", "-c", c.script)
		if code != c.want {
			t.Errorf("run -- sh -c %q: exit %d, want %d (stderr %q)", c.script, code, c.want, stderr)
			continue
		}
		var rep struct {
			CommandStatus *int `json:"command_status"`
		}
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil || rep.CommandStatus == nil || *rep.CommandStatus != c.want {
			t.Errorf("run -- sh -c %q: command_status %v (%v), want %d", c.script, rep.CommandStatus, err, c.want)
		}
	}
	// udstrace's own failures keep codes of their own.
	if _, _, code := runCLI(t, bin, "run", "--", "no-such-command-anywhere"); code != exitNotFound {
		t.Errorf("a command not found: exit %d, want %d", code, exitNotFound)
	}
	if _, _, code := runCLI(t, bin, "attach", "--pid", "4194000"); code != exitFailure {
		t.Errorf("attach to a missing process: exit %d, want %d", code, exitFailure)
	}
	// Other subcommands report 0 once traced, whatever their targets did.
	stdout, _, code := runCLI(t, bin, "run", "--workload", "echo", "--format", "json")
	if code != exitOK || !json.Valid([]byte(stdout)) {
		t.Errorf("run --workload echo: exit %d, want %d and a report", code, exitOK)
	}
}
