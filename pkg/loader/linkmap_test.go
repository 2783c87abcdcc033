package loader

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestLinkMapOrder: a running process's link map starts with the program, and an LD_PRELOAD
// object comes before the libraries it links (libc): the order its symbols bind in.
func TestLinkMapOrder(t *testing.T) {
	testenv.NeedRoot(t)
	const je = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
	if _, err := os.Stat(je); err != nil {
		t.Fatalf("%s missing (make deps installs it): %v", je, err)
	}
	cmd := exec.Command("/bin/sleep", "30")
	cmd.Env = append(os.Environ(), "LD_PRELOAD="+je)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var lm []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if lm, err = LinkMap(cmd.Process.Pid); err == nil && slices.ContainsFunc(lm, func(s string) bool { return IsLibcName(s) }) {
			break
		}
	}
	if len(lm) < 3 || lm[0] != "" {
		t.Fatalf("link map %q: want the program (\"\") first, then its objects", lm)
	}
	pre := slices.IndexFunc(lm, func(s string) bool { return filepath.Base(s) == filepath.Base(je) })
	libc := slices.IndexFunc(lm, func(s string) bool { return IsLibcName(s) })
	if pre < 0 || libc < 0 || pre > libc {
		t.Errorf("link map %s: want %s before libc", strings.Join(lm, " "), je)
	}
}
