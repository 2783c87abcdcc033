// SPDX-License-Identifier: MIT

package workload

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const classic = "This is the first string from the client.\n" +
	"This is the second string from the client.\n" +
	"This is the third string from the client.\n"

func extract(t *testing.T) Paths {
	t.Helper()
	p, err := Extract(t.TempDir())
	if errors.Is(err, ErrMissing) {
		t.Fatalf("%v: run `make -C workload` before `go test ./workload`", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startServer starts echo-server for n clients and waits for "ready\n".
func startServer(t *testing.T, p Paths, n int) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "echo.sock")
	cmd := exec.Command(p.Server, sock, strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("server said %q, stderr %q", line, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("server not ready after 10s")
	}
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("echo-server: %v, stderr %q", err, stderr.String())
			}
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("echo-server did not unlink %s", sock)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("echo-server did not exit after serving its clients")
		}
	})
	return sock
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v, stderr %q", filepath.Base(name), args, err, stderr.String())
	}
	return stdout.String()
}

// sized returns what echo-client prints for MESSAGES=n SIZE=size>0.
func sized(n, size int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		for j := 0; j+1 < size; j++ {
			b.WriteByte(byte('a' + (i+j)%26))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func TestEchoClients(t *testing.T) {
	p := extract(t)
	sock := startServer(t, p, 4)
	for _, mode := range []string{"raw", "stdio"} {
		if got := run(t, nil, p.Client, mode, sock, "3", "0"); got != classic {
			t.Errorf("%s client printed %q, want %q", mode, got, classic)
		}
		const size = 1 << 20
		if got := run(t, nil, p.Client, mode, sock, "2", strconv.Itoa(size)); got != sized(2, size) {
			t.Errorf("%s client with SIZE=%d: output differs (len %d)", mode, size, len(got))
		}
	}
}

func TestAllocPatternAndChain(t *testing.T) {
	p := extract(t)
	if out := run(t, nil, p.AllocPattern, "2"); !strings.HasPrefix(out, "allocpattern rounds=2 ") {
		t.Errorf("allocpattern printed %q", out)
	}
	run(t, nil, p.Chain, "3")
}

func TestNoAllocImports(t *testing.T) {
	p := extract(t)
	banned := []string{"malloc", "calloc", "realloc", "free", "fdopen", "printf", "puts", "fputs", "fopen"}
	check := func(path string, banned []string) {
		f, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		syms, err := f.ImportedSymbols()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syms {
			for _, b := range banned {
				if s.Name == b {
					t.Errorf("%s imports %s@%s", filepath.Base(path), s.Name, s.Version)
				}
			}
		}
	}
	check(p.Server, banned)
	// The client links stdio for its stdio mode, but never calls the
	// malloc family itself.
	check(p.Client, banned[:4])
}

type counts struct{ calls, bytes, null uint64 }

// runCounted runs a command under allocount.so and returns its counts file.
func runCounted(t *testing.T, p Paths, name string, args ...string) (map[string]counts, string) {
	t.Helper()
	dir := t.TempDir()
	out := run(t, []string{"LD_PRELOAD=" + p.Allocount, "ALLOCOUNT_DIR=" + dir}, name, args...)
	files, err := filepath.Glob(filepath.Join(dir, "allocount.*"))
	if err != nil || len(files) != 1 {
		t.Fatalf("want exactly one allocount file, got %v (%v)", files, err)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]counts{}
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("bad allocount line %q", line)
		}
		var n [3]uint64
		for i := range n {
			if n[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				t.Fatalf("bad allocount line %q", line)
			}
		}
		if _, dup := m[f[0]]; dup {
			t.Fatalf("duplicate allocount line %q", line)
		}
		m[f[0]] = counts{n[0], n[1], n[2]}
	}
	return m, out
}

type call struct {
	fn    string
	bytes uint64
	null  bool
}

// allocPattern is allocpattern's per-round call list (see csrc/allocpattern.c).
var allocPattern = func() []call {
	c := []call{
		{"malloc", 24, false},
		{"malloc", 1000, false},
		{"calloc", 10 * 100, false},
		{"realloc", 64, false},     // realloc(NULL, 64)
		{"realloc", 100000, false}, // grow
		{"realloc", 0, true},       // realloc(p, 0) frees, returns NULL
		{"reallocarray", 8 * 16, false},
		{"posix_memalign", 256, false},
		{"aligned_alloc", 512, false},
		{"memalign", 300, false},
		{"valloc", 5000, false},
		{"pvalloc", 100, false},
		{"malloc", 200000, false},
		{"free", 0, true}, // free(NULL)
	}
	live := 0
	for _, x := range c {
		if x.fn != "realloc" && x.fn != "free" {
			live++
		}
	}
	for i := 0; i < live; i++ {
		c = append(c, call{"free", 0, false})
	}
	return c
}()

func TestAllocountPattern(t *testing.T) {
	p := extract(t)
	const rounds = 3
	got, out := runCounted(t, p, p.AllocPattern, strconv.Itoa(rounds))
	if !strings.Contains(out, "failed=0") {
		t.Errorf("allocpattern printed %q", out)
	}
	want := map[string]counts{}
	for _, c := range allocPattern {
		w := want[c.fn]
		w.calls += rounds
		w.bytes += rounds * c.bytes
		if c.null {
			w.null += rounds
		}
		want[c.fn] = w
	}
	if want["free"].calls != 11*rounds {
		t.Fatalf("test bug: expected 11 frees per round, have %d", want["free"].calls/rounds)
	}
	for fn, w := range want {
		if got[fn] != w {
			t.Errorf("%s: got %+v, want %+v", fn, got[fn], w)
		}
	}
	for fn := range got {
		if _, ok := want[fn]; !ok {
			t.Errorf("unexpected %s: %+v", fn, got[fn])
		}
	}
}

func TestAllocountClients(t *testing.T) {
	p := extract(t)
	sock := startServer(t, p, 2)

	got, out := runCounted(t, p, p.Client, "raw", sock, "3", "0")
	if out != classic {
		t.Errorf("raw client printed %q", out)
	}
	if len(got) != 0 {
		t.Errorf("raw client made malloc-family calls: %v", got)
	}

	got, out = runCounted(t, p, p.Client, "stdio", sock, "3", "0")
	if out != classic {
		t.Errorf("stdio client printed %q", out)
	}
	if got["malloc"].calls < 1 {
		t.Errorf("stdio client made no malloc call: %v", got)
	}
	t.Logf("stdio client: %v", got)
}

// TestAllocountAcrossExecAndExit: a shell (which leaves with _exit) forks a child that execs
// allocpattern; the child's calls in the shell's image before its exec are kept under its PID,
// and ReadCounts adds them to the new image's counts.
func TestAllocountAcrossExecAndExit(t *testing.T) {
	p := extract(t)
	dir := t.TempDir()
	run(t, []string{"LD_PRELOAD=" + p.Allocount, "ALLOCOUNT_DIR=" + dir}, "/bin/sh", "-c", p.AllocPattern+" 1 >/dev/null; true")
	all, err := ReadCounts(dir)
	if err != nil {
		t.Fatal(err)
	}
	byComm := map[string]Counted{}
	for _, c := range all {
		byComm[c.Comm] = c
	}
	sh, ap := byComm["sh"], byComm["allocpattern"]
	if sh.PID == 0 || ap.PID == 0 || len(all) != 2 {
		t.Fatalf("want counts for sh (it leaves with _exit) and allocpattern, got %+v", all)
	}
	pre, err := readCountFile(filepath.Join(dir, fmt.Sprintf("allocount.%d.exec", ap.PID)))
	if err != nil || pre.Comm != "sh" || pre.Funcs["malloc"].Calls == 0 {
		t.Fatalf("want the child's pre-exec shell calls in allocount.%d.exec, got %+v (%v)", ap.PID, pre, err)
	}
	post, err := readCountFile(filepath.Join(dir, fmt.Sprintf("allocount.%d", ap.PID)))
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range ap.Funcs {
		if want := pre.Funcs[name].Calls + post.Funcs[name].Calls; n.Calls != want {
			t.Errorf("%s: merged %d calls, want %d before exec + %d after", name, n.Calls, pre.Funcs[name].Calls, post.Funcs[name].Calls)
		}
	}
}

func TestTraced(t *testing.T) {
	got := Traced(map[string]Count{
		"malloc": {Calls: 3, Bytes: 30}, "aligned_alloc": {Calls: 1, Bytes: 64}, "memalign": {Calls: 2, Bytes: 20},
		"free": {Calls: 5, Bytes: 0, Null: 2}, "calloc": {Calls: 0},
	})
	want := map[string][2]uint64{"malloc": {3, 30}, "memalign": {3, 84}, "free": {5, 0}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Traced = %v, want %v", got, want)
	}
}
