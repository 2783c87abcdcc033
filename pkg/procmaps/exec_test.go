package procmaps

import (
	"os"
	"os/exec"
	"testing"

	"github.com/udstrace/udstrace/internal/safeopen"
)

func keyOf(t *testing.T, path string) string {
	t.Helper()
	f, err := safeopen.Open(path, safeopen.Options{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return fileKey(f)
}

// TestLateExecNamesItsOwnImage is an exec event read after the process exec'd again (issue #12
// item 2: `exec /usr/bin/env bash` chains under load labelled bash's frames /usr/bin/env). The
// process runs sleep by now; the event says bash. Bash's module must be named bash, whatever
// /proc/PID/exe shows, and the image the process runs now must keep its own name.
func TestLateExecNamesItsOwnImage(t *testing.T) {
	const bash, sleep = "/usr/bin/bash", "/usr/bin/sleep"
	for _, p := range []string{bash, sleep} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := uint32(cmd.Process.Pid)
	bashKey, sleepKey := keyOf(t, bash), keyOf(t, sleep)

	tb := New()
	defer tb.Close()
	// The start of text a bash image had: not what the process (sleep) has now.
	tb.Exec(pid, bash, 0x1000, 0, bashKey)
	m := tb.Module(bashKey)
	if m == nil {
		t.Fatalf("bash's module was not opened from the exec path %s", bash)
	}
	if m.Path != bash {
		t.Errorf("bash's module is named %q, want %q, not the name of the image the process has now", m.Path, bash)
	}
	if want := keyOf(t, bash); m.Key != want {
		t.Errorf("bash's module has key %s, want %s", m.Key, want)
	}
	// The process's own image, when its exec event comes, keeps its name.
	tb.Exec(pid, sleep, startCodeOf(pid), 0, sleepKey)
	s := tb.Module(sleepKey)
	if s == nil || s.Path != sleep {
		t.Fatalf("sleep's module: %+v, want it named %s", s, sleep)
	}
	if m.BuildID == "" || m.BuildID == s.BuildID {
		t.Errorf("bash and sleep modules' build-ids %q and %q: want both, different", m.BuildID, s.BuildID)
	}
}
