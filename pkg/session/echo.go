package session

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/pkg/launch"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/workload"
)

// echoDirPrefix starts the name of every echo run's private directory: udstrace-echo-PID-RANDOM,
// PID being udstrace's, so a directory left by a udstrace that is gone can be told apart.
const echoDirPrefix = "udstrace-echo-"

// testPanicEnv, set to "after-attach", makes the echo run crash (a panic on another goroutine, so no
// deferred cleanup runs) once the workload is running: the stress checks use it to prove that nothing
// is left behind by a crash.
const testPanicEnv = "UDSTRACE_TEST_PANIC"

// runEcho runs the AF_UNIX echo experiment: a server, a raw-syscall client and a stdio client.
//
// Nothing outlives udstrace, however it ends: the BPF programs and links live only in udstrace's file
// descriptors; the workload processes get a parent-death signal (SIGTERM for the server, which then
// unlinks its socket, SIGKILL for the clients) and each leads a process group that a keeper kills with
// udstrace (see launch); and the private directory holding the binaries and the socket belongs to a
// janitor process (launch.Janitor) that removes it when udstrace's pipe to it closes.
//
// The workload's user cannot change what runs as the workload: the binaries are root's (0555) in a
// directory that is root's (0755), each pinned by device and inode and checked again right before its
// exec; only the socket's directory (work/, 0700) is the workload user's.
// Directories of a udstrace that died before its janitor could act (the janitor itself was killed) are
// removed by the next echo run.
// ErrNoMuslEcho: this udstrace was built without musl-gcc, so it carries no musl echo programs.
var ErrNoMuslEcho = errors.New("this udstrace was built without the musl echo programs")

func runEcho(ctx context.Context, opts Options) (*report.Report, error) {
	if opts.Messages <= 0 {
		opts.Messages = 3
	}
	if opts.Size < 0 || opts.Size > 1<<20 {
		return nil, fmt.Errorf("choosing message size: %d is not in [0, 1048576]", opts.Size)
	}
	cred, err := workloadUser(opts.User)
	if err != nil {
		return nil, err
	}
	cleanStaleEchoDirs()
	uid, gid := -1, -1
	if cred != nil {
		uid, gid = int(cred.Uid), int(cred.Gid)
	}
	jan, err := launch.StartJanitor(fmt.Sprintf("%s%d-*", echoDirPrefix, os.Getpid()), uid, gid)
	if err != nil {
		return nil, err
	}
	defer jan.Close()
	bins, err := workload.Extract(jan.Dir)
	if err != nil {
		return nil, err
	}
	switch opts.EchoLibc {
	case "", "glibc":
	case "musl":
		if bins.ServerMusl == "" || bins.ClientMusl == "" {
			return nil, ErrNoMuslEcho
		}
		bins.Server, bins.Client = bins.ServerMusl, bins.ClientMusl
	default:
		return nil, fmt.Errorf("choosing the echo workload's C library: %q is not glibc or musl", opts.EchoLibc)
	}
	server, err := launch.Pin(bins.Server)
	if err != nil {
		return nil, err
	}
	defer server.Close()
	client, err := launch.Pin(bins.Client)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	s, err := startFor(bins.Client, opts)
	if err != nil {
		return nil, err
	}
	s.meta.Command = []string{"workload", "echo", "--messages", strconv.Itoa(opts.Messages), "--size", strconv.Itoa(opts.Size)}
	env := echoEnv{bins: bins, server: server, client: client, dir: jan.Work, sock: filepath.Join(jan.Work, "echo.sock"), cred: cred}
	if err := s.echo(ctx, env, opts); err != nil {
		s.abort()
		return nil, err
	}
	return s.finish()
}

// echoEnv is where and as whom the echo workload runs.
type echoEnv struct {
	bins           workload.Paths
	server, client *launch.FileID      // the binaries as extracted, checked again at exec
	dir, sock      string              // the workload user's directory and the socket in it
	cred           *syscall.Credential // nil: as udstrace
}

// workloadUser resolves --user to the credentials the workload runs with; nil means stay as udstrace.
func workloadUser(name string) (*syscall.Credential, error) {
	if name == "" || name == "root" {
		return nil, nil
	}
	uid, gid, ok := lookupUser(name)
	if !ok {
		return nil, fmt.Errorf("running the echo workload as user %q: no such user on this machine: create it, or choose another with --user USER (--user root keeps root)", name)
	}
	if uid == 0 {
		return nil, nil
	}
	return &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}, nil
}

// lookupUser finds a user by name (or numeric uid) in /etc/passwd. It reads the file itself rather
// than use os/user, which would link udstrace against libc through cgo.
func lookupUser(name string) (uid, gid uint32, ok bool) {
	data, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return 0, 0, false
	}
	var byID []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 4 || strings.HasPrefix(line, "#") {
			continue
		}
		if f[0] == name || (byID == nil && f[2] == name) {
			u, err1 := strconv.ParseUint(f[2], 10, 32)
			g, err2 := strconv.ParseUint(f[3], 10, 32)
			if err1 != nil || err2 != nil {
				continue
			}
			if f[0] == name {
				return uint32(u), uint32(g), true
			}
			byID = f
		}
	}
	if byID != nil {
		u, _ := strconv.ParseUint(byID[2], 10, 32)
		g, _ := strconv.ParseUint(byID[3], 10, 32)
		return uint32(u), uint32(g), true
	}
	return 0, 0, false
}

// cleanStaleEchoDirs removes the directories of echo runs whose udstrace is gone. Only directories
// that are udstrace's user's and hold nothing but the workload's own files are touched.
func cleanStaleEchoDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), echoDirPrefix+"*"))
	for _, d := range dirs {
		pidText, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), echoDirPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || err == syscall.EPERM {
			continue // its udstrace still runs
		}
		if onlyWorkloadFiles(d) {
			os.RemoveAll(d)
		}
	}
}

func onlyWorkloadFiles(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return false // made by someone else: not a run of ours
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	known := map[string]bool{"work": true, "echo.sock": true}
	for _, name := range workload.Names() {
		known[name] = true
	}
	for _, e := range entries {
		if !known[e.Name()] {
			return false
		}
	}
	return true
}

func (s *Session) echo(ctx context.Context, env echoEnv, opts Options) error {
	out := opts.Stdout
	if out == nil {
		out = io.Discard
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("starting echo server: %w", err)
	}
	defer ready.Close()
	server, err := s.launch([]string{env.bins.Server, env.sock, "2"}, launch.Options{
		Stdout: readyW, Stderr: opts.Stderr, Dir: env.dir, Credential: env.cred, Pinned: env.server,
		DeathSignal: syscall.SIGTERM, // the server unlinks its socket, then dies of it
	}, "server")
	readyW.Close()
	if err != nil {
		return err
	}
	serverDone := make(chan struct{})
	defer func() {
		select {
		case <-serverDone:
		default:
			server.Abort()
		}
	}()
	if err := waitReady(ready, 10*time.Second); err != nil {
		server.Abort()
		close(serverDone)
		return err
	}
	if os.Getenv(testPanicEnv) == "after-attach" {
		go func() {
			time.Sleep(500 * time.Millisecond)
			panic(testPanicEnv + "=after-attach: simulated crash while tracing")
		}()
	}
	msgs, size := strconv.Itoa(opts.Messages), strconv.Itoa(opts.Size)
	for _, mode := range []string{"raw", "stdio"} {
		if ctx.Err() != nil { // interrupted: start nothing more
			s.warn("interrupted: the %s client was not started", mode)
			continue
		}
		ws, err := s.runOne(ctx, []string{env.bins.Client, mode, env.sock, msgs, size},
			launch.Options{Stdout: out, Stderr: opts.Stderr, Dir: env.dir, Credential: env.cred, Pinned: env.client}, report.Role("client-"+mode))
		if err != nil {
			return err
		}
		if ws != 0 {
			s.warn("%s client %s", mode, launch.StatusText(ws))
		}
	}
	ws, err := s.wait(ctx, server)
	close(serverDone)
	if err != nil {
		return err
	}
	if ws != 0 {
		s.warn("echo server %s", launch.StatusText(ws))
	}
	return nil
}

// waitReady waits for the server's "ready" line, sent once it listens.
func waitReady(r *os.File, timeout time.Duration) error {
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(r).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "ready\n" {
			return fmt.Errorf("starting echo server: it exited before listening")
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("starting echo server: not listening after %s", timeout)
	}
}
