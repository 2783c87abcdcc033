package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestVerifyGCCLinkMatches: a whole gcc compile and link (gcc, cc1, as, collect2, ld) under
// --verify matches the interposer process by process, function by function. It once failed on
// collect2 (+1 malloc, +1 free under the interposer: the traced gcc had been given its absolute
// path as argv[0], and gcc passes paths derived from it on to collect2) and, 5 runs in 12, on
// cc1's calloc (cc1 hashes pointers: with ASLR two runs differ), which --verify now runs with
// ASLR off on both sides.
func TestVerifyGCCLinkMatches(t *testing.T) {
	testenv.NeedRoot(t)
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is this test's workload: %v", err)
	}
	bin := buildCLI(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "hello.c")
	if err := os.WriteFile(src, []byte("#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runCLI(t, bin, "run", "--verify", "--ring-size", "268435456", "-o", "/dev/null", "--",
		"gcc", "-O2", "-o", filepath.Join(dir, "hello"), src)
	i := strings.Index(stderr, "VERIFY")
	if i < 0 {
		t.Fatalf("exit %d and no VERIFY table:\n%s", code, stderr)
	}
	table := stderr[i:]
	if code != exitOK || strings.Contains(table, "MISMATCH") {
		t.Fatalf("%s: exit %d, want 0 and every process MATCH:\n%s", gcc, code, table)
	}
	for _, comm := range []string{"gcc", "cc1", "as", "collect2", "ld"} {
		found := false
		for _, line := range strings.Split(table, "\n") {
			if f := strings.Fields(line); len(f) == 6 && f[0] == comm && f[5] == "MATCH" {
				found = true
			}
		}
		if !found {
			t.Errorf("no MATCH row for %s:\n%s", comm, table)
		}
	}
}
