// Package fileattack builds and runs, as user nobody, the programs that once hung a root
// udstrace by putting a FIFO where it opens a file: an executable that renames a FIFO over its
// own path and exits, a binary whose .gnu_debuglink names a FIFO beside it, and a fake
// libc.so.6 mapped executable and then replaced by a FIFO. The CLI tests and the stress check
// share them.
package fileattack

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// HangSlack is how far past its --duration an attacked trace may end before it counts as hung: a
// blocked open never ends on its own, while a loaded machine may delay a healthy trace by seconds.
const HangSlack = 15 * time.Second

// Nobody's ids: the attacker is an unprivileged local user.
const (
	NobodyUID = 65534
	NobodyGID = 65534
)

const execSelfSrc = `#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
	char tmp[4096];
	free(malloc(100));
	snprintf(tmp, sizeof tmp, "%s.fifo", argv[0]);
	if (mkfifo(tmp, 0644) || rename(tmp, argv[0])) { perror("fifo over exe"); return 1; }
	return 0;
}
`

const debuglinkSrc = `#include <stdlib.h>
int main(void) {
	volatile char *p = malloc(64);
	p[0] = 1;
	free((void *)p);
	return 0;
}
`

const fakeLibcSrc = `#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
	char tmp[4096];
	int fd = open(argv[1], O_RDONLY);
	/* Below the program and its libraries: the first libc in /proc/PID/maps is this one. */
	if (fd < 0 || mmap((void *)0x10000000, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0) == MAP_FAILED) { perror(argv[1]); return 1; }
	close(fd);
	snprintf(tmp, sizeof tmp, "%s.fifo", argv[1]);
	if (mkfifo(tmp, 0644) || rename(tmp, argv[1])) { perror("fifo over libc"); return 1; }
	puts("ready");
	fflush(stdout);
	pause();
	return 0;
}
`

// Kit is the attack programs, built in a directory nobody owns.
type Kit struct {
	Dir       string // owned by nobody, mode 0755
	ExecSelf  string // renames a FIFO over its own path, then exits
	Debuglink string // .gnu_debuglink names Debuglink+".debug", a FIFO
	FakeLibc  string // maps Dir/libc.so.6 (a copy of the real libc) executable, puts a FIFO there, waits
}

// Build compiles the programs into a new directory under parent (cc, objcopy needed).
func Build(parent string) (*Kit, error) {
	dir, err := os.MkdirTemp(parent, "fileattack-")
	if err != nil {
		return nil, err
	}
	k := &Kit{Dir: dir, ExecSelf: filepath.Join(dir, "execself"), Debuglink: filepath.Join(dir, "debuglinked"), FakeLibc: filepath.Join(dir, "fakelibc")}
	for _, p := range []struct{ out, src string }{{k.ExecSelf, execSelfSrc}, {k.Debuglink, debuglinkSrc}, {k.FakeLibc, fakeLibcSrc}} {
		// No -g: the debuglinked binary must need its separate debug file.
		if err := compile(p.out, p.src); err != nil {
			return nil, err
		}
	}
	// objcopy computes the link's CRC from the file named; then a FIFO takes its place.
	dbg := k.Debuglink + ".debug"
	if err := os.WriteFile(dbg, []byte("debug"), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("objcopy", "--add-gnu-debuglink="+filepath.Base(dbg), filepath.Base(k.Debuglink))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("objcopy --add-gnu-debuglink: %v\n%s", err, out)
	}
	if err := os.Remove(dbg); err != nil {
		return nil, err
	}
	if err := syscall.Mkfifo(dbg, 0o644); err != nil {
		return nil, err
	}
	for _, f := range []string{dir, k.ExecSelf, k.Debuglink, dbg, k.FakeLibc} {
		if err := os.Lchown(f, NobodyUID, NobodyGID); err != nil {
			return nil, err
		}
	}
	return k, os.Chmod(dir, 0o755)
}

func compile(out, src string) error {
	c := out + ".c"
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		return err
	}
	if b, err := exec.Command("cc", "-O1", "-o", out, c).CombinedOutput(); err != nil {
		return fmt.Errorf("compiling %s: %v\n%s", filepath.Base(out), err, b)
	}
	return nil
}

// AsNobody makes cmd run as nobody in its own process group (killed as a whole).
func AsNobody(cmd *exec.Cmd) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: NobodyUID, Gid: NobodyGID}, Setpgid: true}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	return cmd
}

// Loop runs the exec-self attack (fresh copies of the program, each renaming a FIFO over
// itself) or the debuglinked program, as nobody, n times or until ctx ends; the exec-self copies
// are left as FIFOs in Dir.
func (k *Kit) Loop(ctx context.Context, prog string, n int) error {
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do i=$((i+1)); `, n)
	if prog == k.ExecSelf {
		script += `cp execself v$i && ./v$i || exit 1; done`
	} else {
		script += `./` + filepath.Base(prog) + ` || exit 1; done`
	}
	cmd := AsNobody(exec.CommandContext(ctx, "/bin/sh", "-c", script))
	cmd.Dir = k.Dir
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("attack loop %s: %v\n%s", filepath.Base(prog), err, out)
	}
	return nil
}

// StartFakeLibc copies the real libc to Dir/libc.so.6 and starts, as nobody, the program that
// maps it executable and renames a FIFO over it; it returns once the FIFO is in place. stop
// kills it.
func (k *Kit) StartFakeLibc(realLibc string) (stop func(), err error) {
	b, err := os.ReadFile(realLibc)
	if err != nil {
		return nil, err
	}
	fake := filepath.Join(k.Dir, "libc.so.6")
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		return nil, err
	}
	if err := os.Lchown(fake, NobodyUID, NobodyGID); err != nil {
		return nil, err
	}
	cmd := AsNobody(exec.Command(k.FakeLibc, fake))
	cmd.Dir = k.Dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop = func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			stop()
			return nil, fmt.Errorf("fake libc program did not get ready (%q)", line)
		}
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("fake libc program not ready after 30s")
	}
	return stop, nil
}

// Run is how a udstrace run ended.
type Run struct {
	Code         int           // exit status; -1 if it had to be killed
	Killed       bool          // still running at the hard limit
	Traced       bool          // it logged "tracing" (--debug): the probes were in place
	SinceTracing time.Duration // from that line to its exit
	Stderr       string
}

// RunTracer runs udstrace with args (which should include --debug, for the "tracing" line), as
// root, and kills it if it is still running after limit: a hang is a failure, not a stuck test.
// onTracing, if not nil, runs once tracing has begun.
func RunTracer(bin string, args []string, limit time.Duration, onTracing func()) Run {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return Run{Code: -1, Stderr: err.Error()}
	}
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return Run{Code: -1, Stderr: err.Error()}
	}
	pw.Close()
	var r Run
	var tracedAt time.Time
	var buf strings.Builder
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			buf.WriteString(line + "\n")
			if !r.Traced && strings.Contains(line, "msg=tracing") {
				r.Traced, tracedAt = true, time.Now()
				if onTracing != nil {
					go onTracing()
				}
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(limit):
		r.Killed = true
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		werr = <-done
	}
	end := time.Now()
	select {
	case <-read: // EOF: every writer of the pipe is gone
	case <-time.After(5 * time.Second): // a child still holds it
	}
	pr.Close()
	<-read
	r.Stderr = buf.String()
	if r.Traced {
		r.SinceTracing = end.Sub(tracedAt)
	}
	r.Code = cmd.ProcessState.ExitCode()
	_ = werr
	return r
}
