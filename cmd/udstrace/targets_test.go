package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestUntraceableTargets: each kind of process udstrace cannot trace gets its own one-line explanation.
func TestUntraceableTargets(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	dir := t.TempDir()

	static := filepath.Join(dir, "static")
	src := filepath.Join(dir, "static.c")
	os.WriteFile(src, []byte("#include <unistd.h>\nint main(void){ pause(); return 0; }\n"), 0o644)
	if out, err := exec.Command("cc", "-static", "-o", static, src).CombinedOutput(); err != nil {
		t.Fatalf("cc -static: %v\n%s", err, out)
	}
	staticProc := exec.Command(static)
	if err := staticProc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { staticProc.Process.Kill(); staticProc.Wait() }()

	// A zombie: our own child exits, and we do not reap it until the test ends.
	zproc := exec.Command("true")
	if err := zproc.Start(); err != nil {
		t.Fatal(err)
	}
	defer zproc.Wait()
	zombie := zproc.Process.Pid
	for i := 0; i < 200; i++ {
		if st, _ := os.ReadFile("/proc/" + strconv.Itoa(zombie) + "/stat"); strings.Contains(string(st), ") Z ") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	goSrc := filepath.Join(dir, "gosleep", "main.go")
	os.MkdirAll(filepath.Dir(goSrc), 0o755)
	os.WriteFile(goSrc, []byte("package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(30 * time.Second) }\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "gosleep", "go.mod"), []byte("module gosleep\n\ngo 1.22\n"), 0o644)
	goBin := filepath.Join(dir, "gosleep", "gosleep")
	build := exec.Command("go", "build", "-o", goBin, ".")
	build.Dir = filepath.Dir(goSrc)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	goProc := exec.Command(goBin)
	if err := goProc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { goProc.Process.Kill(); goProc.Wait() }()

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"static binary (run)", []string{"run", "--", static}, "statically linked"},
		{"static binary (attach)", []string{"attach", "--pid", strconv.Itoa(staticProc.Process.Pid)}, "maps no libc"},
		{"zombie", []string{"attach", "--pid", strconv.Itoa(zombie)}, "zombie"},
		{"go binary (run)", []string{"run", "--", goBin}, "Go program"},
		{"go binary (attach)", []string{"attach", "--pid", strconv.Itoa(goProc.Process.Pid)}, "Go program"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, bin, c.args...)
			if code != exitFailure || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit %d and no output", code, stdout, exitFailure)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q: want one line saying %q", stderr, c.want)
			}
			assertClean(t, bin)
		})
	}
}

// TestAttachToExitingProcess: a target gone before the probes are placed is an error, not a hang.
func TestAttachToExitingProcess(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	p := exec.Command("sleep", "0.3")
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	go p.Wait()
	stdout, stderr, code := runCLI(t, bin, "attach", "--pid", strconv.Itoa(p.Process.Pid), "--duration", "5s")
	// Either it attached and the process exited (a report, exit 0), or it was gone first (one line, exitFailure).
	switch code {
	case exitOK:
		if !strings.Contains(stdout, "udstrace report") {
			t.Errorf("exit 0 without a report: %q", stdout)
		}
	case exitFailure:
		if strings.Count(stderr, "\n") != 1 {
			t.Errorf("stderr %q: want one line", stderr)
		}
	default:
		t.Errorf("exit %d: %s", code, stderr)
	}
	assertClean(t, bin)
}
