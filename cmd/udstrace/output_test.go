package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// asNobody runs a command as user nobody, the attacker of these tests.
func asNobody(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd
}

// sharedDir is a sticky, world-writable directory like /tmp.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "udstrace-shared-") // t.TempDir's parent is closed to nobody
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runTimed runs root udstrace, which must end within limit (its --duration plus a second).
func runTimed(t *testing.T, bin string, limit time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	start := time.Now()
	stdout, stderr, code = runCLI(t, bin, args...)
	if took := time.Since(start); took > limit {
		t.Errorf("udstrace took %v, more than %v: it blocked", took, limit)
	}
	return stdout, stderr, code
}

// TestOutputPlantedByAnotherUser: nobody plants a FIFO (with a reader waiting on it), a symlink
// to a root file, and a regular file in a sticky world-writable directory; root udstrace -o onto
// each refuses at once with exit 2, opens none of them, and writes nothing anywhere.
func TestOutputPlantedByAnotherUser(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	dir := sharedDir(t)
	trace := []string{"trace", "--duration", "2s", "-o"}
	const limit = 3 * time.Second

	fifo := filepath.Join(dir, "report.fifo")
	if out, err := asNobody("mkfifo", fifo).CombinedOutput(); err != nil {
		t.Fatalf("mkfifo as nobody: %v %s", err, out)
	}
	var got bytes.Buffer
	reader := asNobody("cat", fifo) // blocks in open until a writer opens the FIFO
	reader.Stdout = &got
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- reader.Wait() }()
	time.Sleep(200 * time.Millisecond) // cat reaches its open
	stdout, stderr, code := runTimed(t, bin, limit, append(trace, fifo)...)
	if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "is a FIFO") {
		t.Errorf("FIFO: exit %d, stdout %q, stderr %q; want exit %d and one line saying it is a FIFO", code, stdout, stderr, exitUsage)
	}
	select {
	case err := <-waited:
		t.Errorf("the reader's open of the FIFO returned (%v, read %q): udstrace opened it", err, got.String())
	case <-time.After(300 * time.Millisecond):
	}
	reader.Process.Kill()
	<-waited
	if got.Len() != 0 {
		t.Errorf("the reader got %d bytes", got.Len())
	}

	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("root's"), 0o644)
	link := filepath.Join(dir, "report.link")
	if out, err := asNobody("ln", "-s", victim, link).CombinedOutput(); err != nil {
		t.Fatalf("ln -s as nobody: %v %s", err, out)
	}
	stdout, stderr, code = runTimed(t, bin, limit, append(trace, link)...)
	if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "symlink") {
		t.Errorf("symlink: exit %d, stderr %q; want exit %d, one line naming the symlink", code, stderr, exitUsage)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root's" {
		t.Errorf("the symlink's target now holds %q", b)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the planted symlink was replaced: %v", err)
	}

	planted := filepath.Join(dir, "report.txt")
	if out, err := asNobody("sh", "-c", "echo nobody > "+planted).CombinedOutput(); err != nil {
		t.Fatalf("planting a file as nobody: %v %s", err, out)
	}
	stdout, stderr, code = runTimed(t, bin, limit, append(trace, planted)...)
	if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "uid 65534") {
		t.Errorf("planted file: exit %d, stderr %q; want exit %d, one line naming its owner", code, stderr, exitUsage)
	}
	if b, _ := os.ReadFile(planted); string(b) != "nobody\n" {
		t.Errorf("the planted file now holds %.80q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".udstrace-report-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A new file in the same directory is written, and is root's.
	fresh := filepath.Join(dir, "fresh.txt")
	_, stderr, code = runCLI(t, bin, append(trace, fresh)...) // a trace: no refusal, no bound
	var st syscall.Stat_t
	if err := syscall.Lstat(fresh, &st); code != exitOK || err != nil || st.Uid != 0 || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		t.Errorf("new file: exit %d (%s), stat %v, uid %d: want a regular file of root's", code, stderr, err, st.Uid)
	}
	if b, _ := os.ReadFile(fresh); !strings.Contains(string(b), "udstrace report") {
		t.Errorf("new file holds no report: %q", b)
	}
}

// TestOutputStdStreams: -o /dev/stdout, /proc/self/fd/1 and - write into stdout (a pipe here),
// -o /dev/stderr into stderr.
func TestOutputStdStreams(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	for _, path := range []string{"/dev/stdout", "/proc/self/fd/1", "/dev/fd/1", "-", "/dev/stderr"} {
		t.Run(path, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, bin, "run", "-o", path, "--", "true")
			got := stdout
			if path == "/dev/stderr" {
				got = stderr
			}
			if code != exitOK || !strings.HasPrefix(got, "udstrace report") {
				t.Errorf("exit %d, stdout %q, stderr %q: want the report on %s", code, stdout, stderr, path)
			}
		})
	}
}

// TestOutputFile: -o replaces a regular file atomically, writes into character devices, and
// refuses symlinks, FIFOs and directories without opening them.
func TestOutputFile(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "r.json")
	os.WriteFile(regular, []byte("old"), 0o600)
	w, commit, err := openOutput(regular)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("new"))
	if err := commit(true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "new" {
		t.Errorf("report file holds %q", b)
	}
	// A failed trace leaves the old file and no temporary.
	w, commit, _ = openOutput(regular)
	w.Write([]byte("partial"))
	commit(false)
	if b, _ := os.ReadFile(regular); string(b) != "new" {
		t.Errorf("report file after a failed trace holds %q", b)
	}
	w, commit, err = openOutput(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("x"))
	if err := commit(true); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(os.DevNull); err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("%s is no longer a device: %v", os.DevNull, err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(regular, link)
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o600)
	for _, p := range []string{link, fifo, dir, dir + "/", filepath.Join(dir, "no", "such")} {
		if _, _, err := openOutput(p); err == nil {
			t.Errorf("-o %s accepted", p)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".udstrace-report-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
