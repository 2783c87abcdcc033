package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/fileattack"
	"github.com/udstrace/udstrace/internal/testenv"
)

// The processes a udstrace run starts are found, wherever they were reparented, by a variable
// unique to the run that all of them inherit: /proc is the oracle, not udstrace's report.
const procsMarkerEnv = "UDSTRACE_PROCS_TEST"

// markedRun is a udstrace started with a marker, its stdout and stderr in files.
type markedRun struct {
	cmd            *exec.Cmd
	marker         string
	stdout, stderr string
	done           chan struct{}
	ended          time.Time
}

func startMarked(t *testing.T, bin string, args ...string) *markedRun {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	dir := t.TempDir()
	r := &markedRun{marker: hex.EncodeToString(b), stdout: filepath.Join(dir, "stdout"), stderr: filepath.Join(dir, "stderr"), done: make(chan struct{})}
	out, err := os.Create(r.stdout)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	errf, err := os.Create(r.stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer errf.Close()
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = append(os.Environ(), procsMarkerEnv+"="+r.marker)
	r.cmd.Stdout, r.cmd.Stderr = out, errf
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); r.ended = time.Now(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
		for _, p := range markedProcs(r.marker) {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})
	return r
}

// wait waits for udstrace to end, up to limit; it fails the test if it does not.
func (r *markedRun) wait(t *testing.T, limit time.Duration) syscall.WaitStatus {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(limit):
		t.Fatalf("udstrace still runs %s later: %s", limit, r.errText())
	}
	return r.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

func (r *markedRun) errText() string {
	b, _ := os.ReadFile(r.stderr)
	return strings.TrimSpace(string(b))
}

// report reads the JSON report udstrace wrote on stdout.
func (r *markedRun) report(t *testing.T) jsonReport {
	t.Helper()
	b, err := os.ReadFile(r.stdout)
	if err != nil {
		t.Fatal(err)
	}
	var rep jsonReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("no JSON report (%v): stdout %q, stderr %s", err, b, r.errText())
	}
	return rep
}

type jsonReport struct {
	Warnings  []string `json:"warnings"`
	Processes []struct {
		PID        int    `json:"pid"`
		Comm       string `json:"comm"`
		Role       string `json:"role"`
		Exited     bool   `json:"exited"`
		ExitCode   *int   `json:"exit_code"`
		ExitSignal int    `json:"exit_signal"`
	} `json:"processes"`
	SocketPath struct {
		Holds bool `json:"holds"`
	} `json:"socket_path"`
}

func (rep jsonReport) warned(sub string) bool {
	for _, w := range rep.Warnings {
		if strings.Contains(w, sub) {
			return true
		}
	}
	return false
}

type markedProc struct {
	pid  int
	comm string
}

// markedProcs lists the live (not zombie) processes carrying marker in their environment.
func markedProcs(marker string) []markedProc {
	want := []byte(procsMarkerEnv + "=" + marker + "\x00")
	var out []markedProc
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		env, err := os.ReadFile(d + "/environ")
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		stat, err := os.ReadFile(d + "/stat")
		if i := bytes.LastIndexByte(stat, ')'); err != nil || i < 0 || bytes.HasPrefix(bytes.TrimSpace(stat[i+1:]), []byte("Z")) {
			continue
		}
		comm, _ := os.ReadFile(d + "/comm")
		var pid int
		fmt.Sscan(filepath.Base(d), &pid)
		out = append(out, markedProc{pid, strings.TrimSpace(string(comm))})
	}
	return out
}

// waitComm waits until a process of the run named comm runs, and returns its pid.
func waitComm(t *testing.T, r *markedRun, comm string) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range markedProcs(r.marker) {
			if p.comm == comm {
				return p.pid
			}
		}
		select {
		case <-r.done:
			t.Fatalf("udstrace ended before %s ran: %s", comm, r.errText())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s never ran under udstrace: %s", comm, r.errText())
	return 0
}

// TestKillLeavesNoGroup: SIGKILL of udstrace (uncatchable) while the command's own child runs leaves
// no process of the run behind: not the command, not its child, not udstrace's helpers.
func TestKillLeavesNoGroup(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	for i := range 3 {
		r := startMarked(t, bin, "run", "--format", "json", "--", "sh", "-c", "sleep 300; true")
		waitComm(t, r, "sleep")
		r.cmd.Process.Signal(syscall.SIGKILL)
		r.wait(t, 10*time.Second)
		deadline := time.Now().Add(5 * time.Second)
		left := markedProcs(r.marker)
		for len(left) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			left = markedProcs(r.marker)
		}
		if len(left) > 0 {
			t.Fatalf("run %d: 5 s after udstrace's SIGKILL these of its processes still live: %v", i, left)
		}
		t.Logf("run %d: nothing left %s after the SIGKILL", i, time.Since(r.ended).Round(time.Millisecond))
	}
}

// TestInterruptEscalates: a command that ignores SIGTERM (its child inherits that) is stopped by
// Ctrl-C anyway: SIGTERM to its group, SIGKILL after --kill-after; the report is written.
func TestInterruptEscalates(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	const grace = 2 * time.Second
	r := startMarked(t, bin, "run", "--kill-after", grace.String(), "--format", "json", "--", "sh", "-c", `trap "" TERM; sleep 600`)
	waitComm(t, r, "sleep")
	sent := time.Now()
	r.cmd.Process.Signal(syscall.SIGINT)
	// The margin is for writing the report on a loaded machine; without escalation it takes 600 s.
	// udstrace exits with the command's status: killed by SIGKILL, 128+9.
	if ws := r.wait(t, grace+20*time.Second); ws.ExitStatus() != 128+int(syscall.SIGKILL) {
		t.Fatalf("udstrace %v: %s", ws, r.errText())
	}
	took := r.ended.Sub(sent)
	if took < grace {
		t.Errorf("udstrace ended %s after SIGINT, before the %s grace period was over", took, grace)
	}
	rep := r.report(t)
	if !rep.warned("interrupted") {
		t.Errorf("report lacks the interruption warning: %q", rep.Warnings)
	}
	for _, p := range rep.Processes {
		if (p.Comm == "sh" || p.Comm == "sleep") && p.ExitSignal != int(syscall.SIGKILL) {
			t.Errorf("%s (pid %d) ended with code %v signal %d, want SIGKILL", p.Comm, p.PID, p.ExitCode, p.ExitSignal)
		}
	}
	if left := markedProcs(r.marker); len(left) > 0 {
		t.Errorf("processes of the run still live: %v", left)
	}
	t.Logf("udstrace ended %s after SIGINT (grace %s)", took.Round(time.Millisecond), grace)
}

// TestSecondInterruptKillsAtOnce: with a long --kill-after, a second Ctrl-C kills the group at once.
func TestSecondInterruptKillsAtOnce(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	r := startMarked(t, bin, "run", "--kill-after", "10m", "--format", "json", "--", "sh", "-c", `trap "" TERM; sleep 600`)
	waitComm(t, r, "sleep")
	r.cmd.Process.Signal(syscall.SIGINT)
	time.Sleep(300 * time.Millisecond)
	sent := time.Now()
	r.cmd.Process.Signal(syscall.SIGINT)
	if ws := r.wait(t, 30*time.Second); ws.ExitStatus() != 128+int(syscall.SIGKILL) {
		t.Fatalf("udstrace %v: %s", ws, r.errText())
	}
	rep := r.report(t)
	killed := 0
	for _, p := range rep.Processes {
		if p.Comm == "sleep" && p.ExitSignal == int(syscall.SIGKILL) {
			killed++
		}
	}
	if killed != 1 || !rep.warned("interrupted") {
		t.Errorf("want sleep killed by SIGKILL and an interruption warning, got %+v %q", rep.Processes, rep.Warnings)
	}
	t.Logf("udstrace ended %s after the second SIGINT", r.ended.Sub(sent).Round(time.Millisecond))
}

// TestEchoInterrupted: Ctrl-C while the raw client runs ends the run there: the stdio client never
// starts, and the raw client's death by SIGTERM is said as such.
func TestEchoInterrupted(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	r := startMarked(t, bin, "run", "--workload", "echo", "--messages", "1000000", "--format", "json")
	raw := waitComm(t, r, "echo-client")
	seen := map[int]bool{raw: true}
	time.Sleep(300 * time.Millisecond)
	r.cmd.Process.Signal(syscall.SIGINT)
	for {
		for _, p := range markedProcs(r.marker) {
			if p.comm == "echo-client" {
				seen[p.pid] = true
			}
		}
		select {
		case <-r.done:
		case <-time.After(5 * time.Millisecond):
			continue
		}
		break
	}
	if ws := r.wait(t, 10*time.Second); ws.ExitStatus() != exitOK {
		t.Fatalf("udstrace %v: %s", ws, r.errText())
	}
	rep := r.report(t)
	clients := map[string]int{}
	for _, p := range rep.Processes {
		if strings.HasPrefix(p.Role, "client-") {
			clients[p.Role]++
			if p.Role == "client-raw" && p.ExitSignal != int(syscall.SIGTERM) {
				t.Errorf("raw client: exit code %v signal %d, want killed by SIGTERM", p.ExitCode, p.ExitSignal)
			}
		}
	}
	if len(seen) != 1 || clients["client-stdio"] != 0 || clients["client-raw"] != 1 {
		t.Errorf("clients seen in /proc %v, in the report %v: want the raw client alone", seen, clients)
	}
	for _, w := range []string{"raw client killed by signal 15 (SIGTERM)", "the stdio client was not started", "interrupted"} {
		if !rep.warned(w) {
			t.Errorf("report lacks warning %q: %q", w, rep.Warnings)
		}
	}
}

// TestEchoBinariesRace: an attacker running as nobody, the workload's user, races every echo run
// from the moment its directory appears, trying to replace or move the binaries and the directory.
// Every attempt must fail, and the run must end with its verdict intact.
func TestEchoBinariesRace(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	src, err := os.ReadFile("testdata/racer.c")
	if err != nil {
		t.Fatal(err)
	}
	racer := testenv.CompileC(t, "racer", string(src))
	if err := os.Chmod(filepath.Dir(filepath.Dir(racer)), 0o755); err != nil { // t.TempDir's parent
		t.Fatal(err)
	}
	for i := range 2 {
		att, err := fileattack.StartRacer(racer)
		if err != nil {
			t.Fatal(err)
		}
		r := startMarked(t, bin, "run", "--workload", "echo", "--messages", "200", "--format", "json")
		ws := r.wait(t, 60*time.Second)
		race := att.Stop()
		if len(race.Won) > 0 || race.Wins != 0 {
			t.Errorf("run %d: the attacker won %d times: %v", i, race.Wins, race.Won)
		}
		if race.Dirs < 1 || race.Attempts == 0 {
			t.Fatalf("run %d: the attacker never raced the run (%q)", i, race.Summary)
		}
		if ws.ExitStatus() != exitOK {
			t.Fatalf("run %d: udstrace %v: %s", i, ws, r.errText())
		}
		rep := r.report(t)
		roles := 0
		for _, p := range rep.Processes {
			if p.Role != "" && (p.ExitCode == nil || *p.ExitCode != 0) {
				t.Errorf("run %d: %s (%s) exit code %v signal %d", i, p.Role, p.Comm, p.ExitCode, p.ExitSignal)
			}
			if p.Role != "" {
				roles++
			}
		}
		if roles != 3 || !rep.SocketPath.Holds {
			t.Errorf("run %d: verdict holds=%v with %d workload processes, want true with 3", i, rep.SocketPath.Holds, roles)
		}
		t.Logf("run %d: %s", i, race.Summary)
	}
}

// TestKillAfterFlag: a negative --kill-after is a usage error, one line naming the flag.
func TestKillAfterFlag(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	_, stderr, code := runCLI(t, bin, "run", "--kill-after", "-1s", "--", "true")
	if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "--kill-after") {
		t.Errorf("exit %d, stderr %q: want %d and one line naming --kill-after", code, stderr, exitUsage)
	}
}
