package launch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMain plays udstrace's helper when Start re-executes this test binary as one.
func TestMain(m *testing.M) {
	if IsHelper() {
		err := RunHelper()
		fmt.Fprintf(os.Stderr, "starting command: %v\n", err)
		os.Exit(127)
	}
	os.Exit(m.Run())
}

// TestPinnedReplaced: a pinned binary replaced between Pin and the exec (here by root, the only
// one who can) is refused by the helper rather than run; the pinned one itself runs.
func TestPinnedReplaced(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root under CI=true")
		}
		t.Skip("needs root: the pinned binary must be root's")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "prog")
	write := func(script string) {
		os.Remove(prog)
		if err := os.WriteFile(prog, []byte(script), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	run := func(pin *FileID) (string, syscall.WaitStatus) {
		var out bytes.Buffer
		p, err := Start([]string{prog}, Options{Stdout: &out, Stderr: &out, Pinned: pin})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Release(); err != nil {
			t.Fatal(err)
		}
		ws, _, err := p.Wait(nil, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		return out.String(), ws
	}
	write("#!/bin/sh\necho pinned\n")
	pin, err := Pin(prog)
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Close()
	if out, ws := run(pin); ws != 0 || out != "pinned\n" {
		t.Fatalf("the pinned binary: %s, output %q", StatusText(ws), out)
	}
	write("#!/bin/sh\necho impostor\n")
	out, ws := run(pin)
	if ws.ExitStatus() != 127 || strings.Contains(out, "impostor") || !strings.Contains(out, "replaced") {
		t.Fatalf("a replaced binary: %s, output %q; want it refused (127, \"replaced\")", StatusText(ws), out)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := Pin(prog); err == nil || !strings.Contains(err.Error(), "only root (or udstrace's own user) can write") {
		t.Fatalf("Pin in a world-writable directory: %v, want refused", err)
	}
}
