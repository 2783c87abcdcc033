package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// buildCLI builds udstrace once per test binary run.
func buildCLI(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "udstrace-cli-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "udstrace")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("building udstrace: %v\n%s", err, out)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // TestNotRoot runs it as nobody
		t.Fatal(err)
	}
	return bin
}

func runCLI(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestBadInput(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--workload", "nope"}, exitUsage, "--workload"},
		{[]string{"run", "--", "/no/such/command"}, exitNotFound, "command not found"},
		{[]string{"run", "--", "no-such-command-anywhere"}, exitNotFound, "command not found"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{"run"}, exitUsage, "nothing to trace"},
		{[]string{"run", "--format", "xml", "--workload", "echo"}, exitUsage, "unknown format"},
		{[]string{"run", "--stack", "magic", "--workload", "echo"}, exitUsage, "unknown stack mode"},
		{[]string{"attach", "--pid", "4194000"}, exitFailure, "no such process"},
		{[]string{"attach", "--pid", "2"}, exitFailure, "kernel thread"},
		{[]string{"attach"}, exitUsage, "--pid"},
		{[]string{"run", "--user", "no-such-user-here", "--workload", "echo"}, exitFailure, "no-such-user-here"},
		{[]string{"run", "--max-procs", "-1", "--", "true"}, exitUsage, "--max-procs"},
		{[]string{"run", "--max-sites", "-1", "--", "true"}, exitUsage, "--max-sites"},
		{[]string{"run", "--verify", "--sample-bytes", "4096", "--", "true"}, exitUsage, "--sample-bytes"},
		{[]string{"run", "--allocator-prefix", "je_", "--", "true"}, exitUsage, "--allocator"},
		{[]string{"run", "--ring-size", "8192", "--", "true"}, exitUsage, "--ring-size"},
		{[]string{"run", "--table-size", "10", "--", "true"}, exitUsage, "--table-size"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			stdout, stderr, code := runCLI(t, bin, c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, c.code, stderr)
			}
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.Contains(stderr, c.want) || !strings.HasPrefix(stderr, "udstrace: ") {
				t.Errorf("stderr %q: want one line starting udstrace: and naming %q", stderr, c.want)
			}
			if stdout != "" {
				t.Errorf("stdout not empty on error: %q", stdout)
			}
			assertClean(t, bin)
		})
	}
}

func TestNotRoot(t *testing.T) {
	testenv.NeedRoot(t) // to become nobody
	bin := buildCLI(t)
	cmd := exec.Command(bin, "run", "--workload", "echo")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var e bytes.Buffer
	cmd.Stderr = &e
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
		t.Fatalf("as nobody: %v, want exit %d", err, exitFailure)
	}
	if !strings.Contains(e.String(), "needs root") || strings.Count(e.String(), "\n") != 1 {
		t.Errorf("stderr %q: want one line saying it needs root", e.String())
	}
}

func TestRunWorkloadJSONAndTracefs(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	// udstrace needs no tracefs (raw tracepoints and uprobe PMU links) and mounts nothing.
	const tracefs = "/sys/kernel/tracing"
	if _, err := os.Stat(tracefs + "/events"); err == nil {
		if err := syscall.Unmount(tracefs, 0); err != nil {
			t.Fatalf("unmounting tracefs for the test: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Mount("tracefs", tracefs, "tracefs", 0, "") })
	}
	out := filepath.Join(t.TempDir(), "report.json")
	_, stderr, code := runCLI(t, bin, "run", "--workload", "echo", "--format", "json", "-o", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(tracefs + "/events"); err == nil {
		t.Errorf("tracefs is mounted after the run: udstrace left a mount behind")
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	for _, k := range []string{"schema", "processes", "sites", "socket_path", "lost_events"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("report lacks %s", k)
		}
	}
	if sp, _ := doc["socket_path"].(map[string]any); sp["holds"] != true {
		t.Errorf("socket path verdict does not hold: %v", sp)
	}
	// Text: the last line is the conclusion.
	stdout, _, code := runCLI(t, bin, "run", "--workload", "echo")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || !strings.HasPrefix(lines[len(lines)-1], "Conclusion: the AF_UNIX socket path allocated nothing") {
		t.Errorf("exit %d, last line %q", code, lines[len(lines)-1])
	}
	assertClean(t, bin)
}

// assertClean checks nothing of udstrace is left: programs no process holds, tracer processes.
func assertClean(t *testing.T, bin string) {
	t.Helper()
	if left := testenv.LeftPrograms(); len(left) > 0 {
		t.Errorf("BPF programs left loaded with no process holding them: %v", left)
	}
	if out, _ := exec.Command("pgrep", "-f", bin).Output(); len(out) > 0 {
		t.Errorf("udstrace processes left running: %s", out)
	}
}
