package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestCapabilities: as nobody, each command works with exactly the documented capability set,
// and with any one of them dropped fails at once with one line naming the missing one.
func TestCapabilities(t *testing.T) {
	testenv.NeedRoot(t)
	built := buildCLI(t)
	dir, err := os.MkdirTemp("", "udstrace-caps-") // reachable by nobody
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "udstrace")
	if data, err := os.ReadFile(built); err != nil || os.WriteFile(bin, data, 0o755) != nil {
		t.Fatal(err)
	}
	root := exec.Command("sleep", "60") // another user's process, for attach
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { root.Process.Kill(); root.Wait() }()
	asCaps := func(caps []string, args ...string) (string, int) {
		set := "-all"
		if len(caps) > 0 {
			set = "+" + strings.ToLower(strings.Join(caps, ",+"))
			set = strings.ReplaceAll(set, "cap_", "")
		}
		cmd := exec.Command("setpriv", append([]string{"--reuid=nobody", "--regid=nogroup", "--clear-groups",
			"--inh-caps=" + set, "--ambient-caps=" + set, bin}, args...)...)
		cmd.Dir = dir
		var e bytes.Buffer
		cmd.Stderr = &e
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return e.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return e.String(), 0
	}
	cases := []struct {
		args []string
		caps []string
	}{
		{[]string{"run", "--", "true"}, []string{"CAP_BPF", "CAP_PERFMON"}},
		{[]string{"run", "--workload", "echo"}, []string{"CAP_BPF", "CAP_PERFMON", "CAP_SETUID", "CAP_SETGID"}},
		{[]string{"attach", "--pid", strconv.Itoa(root.Process.Pid), "--duration", "1s"}, []string{"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			if stderr, code := asCaps(c.caps, c.args...); code != exitOK {
				t.Errorf("with %v: exit %d, %s", c.caps, code, stderr)
			}
			for i, drop := range c.caps {
				less := append(append([]string(nil), c.caps[:i]...), c.caps[i+1:]...)
				stderr, code := asCaps(less, c.args...)
				if code != exitFailure || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "missing "+drop) {
					t.Errorf("without %s: exit %d, stderr %q: want exit %d and one line naming it", drop, code, stderr, exitFailure)
				}
			}
		})
	}
	assertClean(t, bin)
}
