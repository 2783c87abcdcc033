package main

import (
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: --version (and version, -V) exits 0 and says the Go and cilium/ebpf versions it was
// built with (go.mod is the oracle for the latter), the running kernel (uname -r) and its features.
func TestVersion(t *testing.T) {
	bin := buildCLI(t)
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/cilium/ebpf (v\S+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod names no cilium/ebpf version")
	}
	release, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{"--version", "version", "-V"} {
		stdout, stderr, code := runCLI(t, bin, arg)
		if code != exitOK || stderr != "" {
			t.Fatalf("%s: exit %d, stderr %q", arg, code, stderr)
		}
		for _, want := range []string{
			"go:          " + runtime.Version() + "\n",
			"cilium/ebpf: " + string(m[1]) + "\n",
			"kernel:      " + strings.TrimSpace(string(release)) + " ",
			"  BTF (/sys/kernel/btf/vmlinux): ",
			"  uprobe_multi links",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("%s: output lacks %q:\n%s", arg, want, stdout)
			}
		}
	}
}
