package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Debuginfod runs a real elfutils debuginfod on 127.0.0.1 indexing dir (-F: its ELF and debug
// files) and returns its URL once it serves build-id id; it is stopped when the test ends.
// Without the server installed the test is skipped, or fails under CI=true.
func Debuginfod(t testing.TB, dir, id string) string {
	t.Helper()
	bin, err := exec.LookPath("debuginfod")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("debuginfod is this test's server: install it (apt-get install debuginfod; make deps)")
		}
		t.Skip("debuginfod not installed (apt-get install debuginfod)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	db := filepath.Join(t.TempDir(), "db.sqlite")
	// -t 0 -g 0: one scan at start, no grooming; the database is the test's own.
	cmd := exec.Command(bin, "-F", "-p", fmt.Sprint(port), "-d", db, "-t", "0", "-g", "0", dir)
	log := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(url + "/buildid/" + id + "/debuginfo")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url
			}
		}
	}
	t.Fatalf("debuginfod on port %d never served build-id %s:\n%s", port, id, log)
	return ""
}
