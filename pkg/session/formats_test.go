package session

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestPprofMatchesJSON reads udstrace's pprof output with go tool pprof and compares its totals with the JSON's.
func TestPprofMatchesJSON(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	o := testOptions(t)
	o.Command = []string{bins.AllocPattern, "2"}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := decodeView(t, rep)
	var bytes, inuse uint64
	for _, s := range v.Sites {
		bytes += s.Bytes
		inuse += s.OutstandingBytes
	}
	path := filepath.Join(t.TempDir(), "alloc.pb.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.WritePprof(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	total := regexp.MustCompile(`of ([0-9]+)B total`)
	for idx, want := range map[string]uint64{"alloc_space": bytes, "inuse_space": inuse} {
		out, err := exec.Command("go", "tool", "pprof", "-top", "-unit=B", "-nodefraction=0", "-symbolize=none", "-sample_index="+idx, path).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool pprof: %v\n%s", err, out)
		}
		m := total.FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("no total in pprof output:\n%s", out)
		}
		if got, _ := strconv.ParseUint(m[1], 10, 64); got != want {
			t.Errorf("%s: pprof total %d B, JSON %d B", idx, got, want)
		}
		if idx == "alloc_space" && !strings.Contains(string(out), "main") {
			t.Errorf("pprof -top does not name main:\n%s", out)
		}
	}
}
