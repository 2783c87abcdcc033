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

// TestPprofMatchesJSON reads udstrace's pprof output with go tool pprof and compares its totals
// with the JSON's, in full and in count mode, for each sample type and the default one (count
// mode's default must be what was allocated: it traces no frees).
func TestPprofMatchesJSON(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	for _, mode := range []string{"full", "count"} {
		o := testOptions(t)
		o.Mode = mode
		o.Command = []string{bins.AllocPattern, "2"}
		rep, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := decodeView(t, rep)
		var bytes, inuse uint64
		for _, s := range v.Sites {
			if s.FileBacked {
				continue // a mapping: the profile shows allocations
			}
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
		want := map[string]uint64{"alloc_space": bytes, "inuse_space": inuse, "": inuse}
		if mode == "count" {
			want = map[string]uint64{"alloc_space": bytes, "": bytes}
		}
		for idx, want := range want {
			args := []string{"tool", "pprof", "-top", "-unit=B", "-nodefraction=0", "-symbolize=none"}
			if idx != "" {
				args = append(args, "-sample_index="+idx)
			}
			out, err := exec.Command("go", append(args, path)...).CombinedOutput()
			if err != nil {
				t.Fatalf("go tool pprof: %v\n%s", err, out)
			}
			m := total.FindStringSubmatch(string(out))
			if m == nil {
				t.Fatalf("%s: no total in pprof output:\n%s", mode, out)
			}
			if got, _ := strconv.ParseUint(m[1], 10, 64); got != want || want == 0 {
				t.Errorf("%s %q: pprof total %d B, JSON %d B", mode, idx, got, want)
			}
			if idx == "alloc_space" && !strings.Contains(string(out), "main") {
				t.Errorf("%s: pprof -top does not name main:\n%s", mode, out)
			}
		}
	}
}
