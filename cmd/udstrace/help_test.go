package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestHelp: each subcommand's --help (and help SUB) exits 0 on stdout with that subcommand's
// options only; the top-level help lists the subcommands.
func TestHelp(t *testing.T) {
	bin := buildCLI(t)
	for _, c := range []struct {
		args        []string
		want, unwnt []string
	}{
		{[]string{"--help"}, []string{"run ", "attach ", "trace ", "top ", "version ", "completion ", "Exit status"}, nil},
		{[]string{"help"}, []string{"run ", "attach ", "Exit status"}, nil},
		{[]string{}, []string{"run ", "attach "}, nil},
		{[]string{"run", "--help"}, []string{"--workload", "--verify", "--kill-after", "-o, --output FILE", "-f, --format", "--mode"}, []string{"--duration", "--pid"}},
		{[]string{"help", "run"}, []string{"--workload", "--verify"}, []string{"--duration"}},
		{[]string{"run", "-h"}, []string{"--workload"}, []string{"--pid"}},
		{[]string{"attach", "--help"}, []string{"attach [flags] PID...", "-p, --pid", "--duration", "-o, --output"}, []string{"--workload", "--verify", "--kill-after", "--messages"}},
		{[]string{"trace", "--help"}, []string{"--comm", "--cgroup", "--duration"}, []string{"--workload", "--kill-after"}},
		{[]string{"top", "--help"}, []string{"--interval", "--comm"}, []string{"--format", "--output", "--weight", "--workload"}},
	} {
		stdout, stderr, code := runCLI(t, bin, c.args...)
		if code != exitOK || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", c.args, code, stderr)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("%v: help lacks %q:\n%s", c.args, w, stdout)
			}
		}
		for _, w := range c.unwnt {
			if strings.Contains(stdout, w+" ") {
				t.Errorf("%v: help shows %q, which does not apply there", c.args, w)
			}
		}
	}
	// A long flag with one dash, as Go's flag package took it, gets the fix named.
	_, stderr, code := runCLI(t, bin, "run", "-format", "json", "--", "true")
	if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "use --format") {
		t.Errorf("-format: exit %d, stderr %q", code, stderr)
	}
}

// TestShortFlagsAndPositionalPIDs: attach takes PIDs as arguments and with -p, together; -o and
// -f are --output and --format. The report must name every PID asked for.
func TestShortFlagsAndPositionalPIDs(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	var pids []string
	for range 3 {
		// perl allocates its 100 kB string every 20 ms: each one is in the report.
		cmd := exec.Command("perl", "-e", `for (1..1500) { my $s = "x" x (100000 + $_); select(undef, undef, undef, 0.02) }`)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		pids = append(pids, strconv.Itoa(cmd.Process.Pid))
	}
	out := filepath.Join(t.TempDir(), "r.json")
	_, stderr, code := runCLI(t, bin, "attach", pids[0], pids[1], "-p", pids[2], "--duration", "1s", "-f", "json", "-o", out)
	if code != exitOK {
		t.Fatalf("attach: exit %d, stderr %q", code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Processes []struct {
			PID int `json:"pid"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("-f json -o: %v", err)
	}
	got := map[string]bool{}
	for _, p := range r.Processes {
		got[strconv.Itoa(p.PID)] = true
	}
	for _, p := range pids {
		if !got[p] {
			t.Errorf("pid %s asked for (positional or -p) is not in the report's processes %v", p, got)
		}
	}
	_, stderr, code = runCLI(t, bin, "attach", "12x")
	if code != exitUsage || !strings.Contains(stderr, `--pid "12x"`) {
		t.Errorf("attach 12x: exit %d, stderr %q", code, stderr)
	}
}

// TestCompletionAndDocs: the completion scripts load in bash and complete udstrace's own flags
// (through cobra's __complete protocol, as the scripts call it), and the man pages render in man.
func TestCompletionAndDocs(t *testing.T) {
	bin := buildCLI(t)
	stdout, _, code := runCLI(t, bin, "__complete", "run", "--for")
	if code != exitOK || !strings.Contains(stdout, "--format") {
		t.Errorf("__complete run --for: exit %d, %q", code, stdout)
	}
	stdout, _, _ = runCLI(t, bin, "__complete", "")
	for _, w := range []string{"run", "attach", "trace", "top", "version"} {
		if !strings.Contains(stdout, w+"\t") {
			t.Errorf("subcommand %s not completed: %q", w, stdout)
		}
	}
	dir := t.TempDir()
	if _, stderr, code := runCLI(t, bin, "docs", dir); code != exitOK {
		t.Fatalf("docs: exit %d, %q", code, stderr)
	}
	// bash sources the script and registers the completion function for udstrace.
	out, err := exec.Command("bash", "-c", "source "+filepath.Join(dir, "completions", "udstrace.bash")+" && complete -p udstrace").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "udstrace") {
		t.Errorf("bash completion: %v %s", err, out)
	}
	for _, page := range []string{"udstrace.1", "udstrace-run.1", "udstrace-attach.1", "udstrace-trace.1", "udstrace-top.1"} {
		p := filepath.Join(dir, "man1", page)
		cmd := exec.Command("man", "-l", "-P", "cat", p)
		cmd.Env = append(os.Environ(), "MANWIDTH=100")
		text, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("man -l %s: %v %s", page, err, text)
			continue
		}
		if !strings.Contains(string(text), "udstrace") {
			t.Errorf("%s renders without udstrace in it:\n%s", page, text)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "man1", "udstrace-run.1")); err == nil && !strings.Contains(string(b), "workload") {
		t.Errorf("udstrace-run.1 lacks run's flags")
	}
	if testing.Short() {
		return
	}
	// make install puts the binary, the pages and the completions where their tools look.
	dest := t.TempDir()
	if out, err := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX=/usr").CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{"bin/udstrace", "share/man/man1/udstrace.1", "share/man/man1/udstrace-run.1",
		"share/bash-completion/completions/udstrace", "share/zsh/site-functions/_udstrace", "share/fish/vendor_completions.d/udstrace.fish"} {
		if st, err := os.Stat(filepath.Join(dest, "usr", f)); err != nil || st.Size() == 0 {
			t.Errorf("make install: %s: %v", f, err)
		}
	}
	if out, err := exec.Command(filepath.Join(dest, "usr/bin/udstrace"), "--version").Output(); err != nil || !strings.HasPrefix(string(out), "udstrace ") {
		t.Errorf("installed udstrace --version: %v %q", err, out)
	}
}
