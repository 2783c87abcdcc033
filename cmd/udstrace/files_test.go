package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/fileattack"
	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/loader"
)

// traceDuration is the --duration of the attacked system-wide traces.
const traceDuration = 4 * time.Second

// filesReport is what these tests read of a report.
type filesReport struct {
	Schema    string   `json:"schema"`
	Warnings  []string `json:"warnings"`
	Processes []struct {
		PID  int    `json:"pid"`
		Comm string `json:"comm"`
		Exe  string `json:"exe"`
	} `json:"processes"`
}

func readReport(t *testing.T, path string) filesReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no report: %v", err)
	}
	var r filesReport
	if err := json.Unmarshal(b, &r); err != nil || r.Schema != "udstrace.report/v1" {
		t.Fatalf("report %s does not parse as udstrace.report/v1: %v", path, err)
	}
	return r
}

// attackedTrace runs a root `udstrace trace --duration 4s` while attack runs (started once
// tracing began) and requires it to end within its duration plus fileattack.HangSlack with a report.
func attackedTrace(t *testing.T, bin string, attack func(ctx context.Context) error) filesReport {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	attackErr := make(chan error, 1)
	r := fileattack.RunTracer(bin, []string{"trace", "--debug", "--duration", traceDuration.String(), "--format", "json", "-o", out},
		traceDuration+90*time.Second, func() { attackErr <- attack(ctx) })
	cancel()
	if r.Killed || !r.Traced || r.Code != exitOK {
		t.Fatalf("udstrace trace: killed %v, tracing began %v, exit %d\n%s", r.Killed, r.Traced, r.Code, tail(r.Stderr))
	}
	t.Logf("udstrace trace ended %s after tracing began (--duration %s)", r.SinceTracing.Round(time.Millisecond), traceDuration)
	// A blocked open never ends on its own (the runner kills it at 90 s); a loaded machine may
	// delay a healthy one by seconds, so the bound is generous rather than tight.
	if r.SinceTracing > traceDuration+fileattack.HangSlack {
		t.Errorf("udstrace trace ended %s after tracing began, over its --duration %s plus %s", r.SinceTracing.Round(time.Millisecond), traceDuration, fileattack.HangSlack)
	}
	select {
	case err := <-attackErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the attack did not end")
	}
	return readReport(t, out)
}

func tail(s string) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

func hasComm(r filesReport, comm string) bool {
	for _, p := range r.Processes {
		if strings.HasPrefix(p.Comm, comm) {
			return true
		}
	}
	return false
}

// TestFIFOAttacks: a local user (nobody) puts a FIFO where root udstrace opens a file on its
// behalf: its executable's path once it exited, its binary's .gnu_debuglink target, a fake
// libc.so.6 it mapped. Each once blocked udstrace in open(2) for good, past --duration and
// signals, with no report; each must now end on time with a report.
func TestFIFOAttacks(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	kit, err := fileattack.Build("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kit.Dir) })

	t.Run("exec path", func(t *testing.T) {
		r := attackedTrace(t, bin, func(ctx context.Context) error { return kit.Loop(ctx, kit.ExecSelf, 300) })
		if !hasComm(r, "v") {
			t.Errorf("no exec-self process (comm v<N>) in the report: the attack was not traced")
		}
	})
	t.Run("debuglink trace", func(t *testing.T) {
		r := attackedTrace(t, bin, func(ctx context.Context) error { return kit.Loop(ctx, kit.Debuglink, 200) })
		if !hasComm(r, "debuglinked") {
			t.Errorf("no debuglinked process in the report: the attack was not traced")
		}
	})
	t.Run("debuglink run", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "report.json")
		r := fileattack.RunTracer(bin, []string{"run", "--debug", "--format", "json", "-o", out, "--", kit.Debuglink}, 90*time.Second, nil)
		if r.Killed || r.Code != exitOK {
			t.Fatalf("udstrace run: killed %v, exit %d\n%s", r.Killed, r.Code, tail(r.Stderr))
		}
		if rep := readReport(t, out); !hasComm(rep, "debuglinked") {
			t.Errorf("no debuglinked process in the report")
		}
	})
	t.Run("fake libc", func(t *testing.T) {
		libc, err := loader.ResolveLibc("/bin/true")
		if err != nil {
			t.Fatal(err)
		}
		stop, err := kit.StartFakeLibc(libc)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		attackedTrace(t, bin, func(context.Context) error { return nil })
	})
	assertClean(t, bin)
}

// TestOddPathsNamedExactly: programs whose paths hold two spaces in a row or a newline are
// named exactly in their frames (JSON), traced with run and attached to, not as /proc/PID/maps
// prints them (spaces squeezed by splitting, the newline escaped as \012).
func TestOddPathsNamedExactly(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	// Asleep first, so that attach finds it running and reads its mappings.
	prog := testenv.CompileC(t, "alloc", "#include <stdlib.h>\n#include <unistd.h>\nint main(void) { sleep(1); for (int i = 0; i < 30; i++) { volatile char *p = malloc(1000); p[0] = 1; free((void *)p); usleep(100000); } return 0; }\n")
	b, err := os.ReadFile(prog)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"prog  name", "prog\nname", `prog\012name`} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, how := range []string{"run", "attach"} {
			out := filepath.Join(t.TempDir(), "report.json")
			args := []string{"run", "--format", "json", "-o", out, "--", path}
			if how == "attach" {
				cmd := exec.Command(path)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				defer cmd.Wait()
				args = []string{"attach", "--pid", strconv.Itoa(cmd.Process.Pid), "--duration", "2500ms", "--format", "json", "-o", out}
			}
			if _, stderr, code := runCLI(t, bin, args...); code != exitOK {
				t.Fatalf("udstrace %s %q: exit %d\n%s", how, path, code, stderr)
			}
			if mods := mainModules(t, out); !slices.Contains(mods, path) {
				t.Errorf("%s %q: no frame of main in that module; main's frames name %q", how, path, mods)
			}
		}
	}
}

// mainModules lists the modules the report's frames of main name.
func mainModules(t *testing.T, report string) []string {
	t.Helper()
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Sites []struct {
			Stack []struct {
				Module   string `json:"module"`
				Function string `json:"function"`
			} `json:"stack"`
		} `json:"sites"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	var mods []string
	for _, s := range rep.Sites {
		for _, f := range s.Stack {
			if f.Function == "main" && !slices.Contains(mods, f.Module) {
				mods = append(mods, f.Module)
			}
		}
	}
	return mods
}
