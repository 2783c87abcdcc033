package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestTopEscapesNames: a process of nobody's whose comm is a terminal title (OSC) and a screen
// clear cannot drive the terminal of whoever runs udstrace top: the only escape sequence in
// top's output is top's own repaint, and the comm appears escaped.
func TestTopEscapesNames(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	dir := sharedDir(t)
	const evil = "\x1b]0;pwn\x07\x1b[2J" // 11 bytes: within the 15 of a comm
	sh := filepath.Join(dir, evil)
	data, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sh, data, 0o755); err != nil {
		t.Fatal(err)
	}
	// Each $(...) forks a child of the same comm, which allocates.
	victim := asNobody(sh, "-c", "while :; do x=$(echo hi); done")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { victim.Process.Kill(); victim.Wait() }()
	if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(victim.Process.Pid) + "/comm"); strings.TrimSpace(string(comm)) != evil {
		t.Fatalf("the victim's comm is %q, want %q", comm, evil)
	}
	stdout, stderr, code := runCLI(t, bin, "top", "--pid", strconv.Itoa(victim.Process.Pid), "--duration", "3s", "--interval", "1s")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	const repaint = "\x1b[H\x1b[2J"
	if strings.Count(stdout, repaint) < 2 {
		t.Fatalf("top drew fewer than two frames: %q", stdout)
	}
	if rest := strings.ReplaceAll(stdout, repaint, ""); strings.ContainsAny(rest, "\x1b\x07\x9b") {
		i := strings.IndexAny(rest, "\x1b\x07\x9b")
		t.Errorf("raw control bytes in top's output near %q", rest[max(0, i-40):min(len(rest), i+40)])
	}
	if !strings.Contains(stdout, `\x1b]0;pwn\a\x1b[2J`) {
		t.Errorf("the escaped comm is not in top's output: %q", stdout)
	}
}
