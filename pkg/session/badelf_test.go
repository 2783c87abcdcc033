package session

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestBrokenSectionHeadersTraced: a program whose e_shoff points past the end of the file still
// runs (the kernel and the loader read only program headers), so it is traced: its calls match
// the LD_PRELOAD interposer's count of the same file, and a warning names the file and what is
// missing.
func TestBrokenSectionHeadersTraced(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	data, err := os.ReadFile(bins.AllocPattern)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(data[0x28:], uint64(len(data))+1<<20)
	bad := filepath.Join(filepath.Dir(bins.AllocPattern), "bad")
	if err := os.WriteFile(bad, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := elf.Open(bad); err == nil {
		t.Fatal("debug/elf reads the patched file: it tests nothing")
	}
	want := truthOf(t, bins.Allocount, bad, "3")
	o := testOptions(t)
	o.Command = []string{bad, "3"}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("udstrace run of %s: %v", bad, err)
	}
	v, _ := decodeView(t, rep)
	if len(v.Processes) != 1 {
		t.Fatalf("report has %d processes, want 1", len(v.Processes))
	}
	compareCounts(t, "bad", heapOnly(v.perKind(v.Processes[0].PID)), want)
	warned := false
	for _, w := range rep.Warnings {
		warned = warned || strings.Contains(w, bad) && strings.Contains(w, "section headers")
	}
	if !warned {
		t.Errorf("no warning naming %s and its section headers: %q", bad, rep.Warnings)
	}
}
