package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/session"
)

// TestServeContainerLabels: a process in a cgroup named as containerd names a Kubernetes pod's
// container gets that container id and pod UID in the metrics, in the served profile's samples
// and in the JSON report, with its cgroup path.
func TestServeContainerLabels(t *testing.T) {
	testenv.NeedRoot(t)
	root, err := session.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	const (
		id  = "7c9e2f1a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"
		uid = "5b2d8c1e-0f3a-4b6c-8d7e-9f0a1b2c3d4e"
	)
	rel := filepath.Join(fmt.Sprintf("udstrace-test-%d.slice", os.Getpid()),
		"kubepods-burstable-pod"+strings.ReplaceAll(uid, "-", "_")+".slice", "cri-containerd-"+id+".scope")
	cg := filepath.Join(root, rel)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatalf("creating cgroup v2 groups: %v", err)
	}
	t.Cleanup(func() { // innermost first, once the held program is gone (cleanups run last first)
		for d := cg; d != root; d = filepath.Dir(d) {
			for i := 0; i < 50; i++ { // the killed program leaves the group asynchronously
				if err := os.Remove(d); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	s := startServed(t, func(hold string, args ...string) *exec.Cmd { // moved before it execs the program
		return exec.Command("/bin/sh", "-c", "echo $$ > "+cg+"/cgroup.procs && exec "+hold+" "+strings.Join(args, " "))
	})
	want := fmt.Sprintf(`udstrace_outstanding_bytes{comm="udshold",container_id="%s",pid="%d",pod_uid="%s",source="heap"} %d`, id, s.pid, uid, holdBytes)
	var exposition string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := http.Get("http://" + s.addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		exposition = string(b)
		if strings.Contains(exposition, want) {
			break
		}
	}
	if !strings.Contains(exposition, want) {
		t.Fatalf("the exposition never had %s:\n%s", want, grepLines(exposition, "udshold"))
	}
	resp, err := http.Get("http://" + s.addr + "/debug/pprof/heap")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	p, err := profile.ParseData(b)
	if err != nil {
		t.Fatal(err)
	}
	labelled := 0
	for _, smp := range p.Sample {
		if len(smp.NumLabel["pid"]) > 0 && smp.NumLabel["pid"][0] == int64(s.pid) {
			if smp.Label["container_id"][0] != id || smp.Label["pod_uid"][0] != uid {
				t.Errorf("sample of udshold labelled %v", smp.Label)
			}
			labelled++
		}
	}
	if labelled == 0 {
		t.Error("no sample of udshold in the served profile")
	}
	s.stop()
	raw, err := os.ReadFile(s.report)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Processes []struct {
			PID         int    `json:"pid"`
			Cgroup      string `json:"cgroup"`
			ContainerID string `json:"container_id"`
			PodUID      string `json:"pod_uid"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, pr := range rep.Processes {
		if pr.PID == s.pid {
			found = true
			if pr.ContainerID != id || pr.PodUID != uid || !strings.HasSuffix(pr.Cgroup, "/"+rel) {
				t.Errorf("JSON report: udshold cgroup %q container_id %q pod_uid %q, want .../%s, %s, %s", pr.Cgroup, pr.ContainerID, pr.PodUID, rel, id, uid)
			}
		}
	}
	if !found {
		t.Errorf("JSON report has no udshold pid %d", s.pid)
	}
}

// grepLines keeps the lines of s containing sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestServeChrootOwnLibc: a program in a chroot with its own copy of libc and ld.so (another
// file than the host's, as in a container) is traced through /proc/PID/root: its libc is probed
// when it maps it, and the 200 blocks it allocates after that are all counted, with stacks.
func TestServeChrootOwnLibc(t *testing.T) {
	testenv.NeedRoot(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	libc, err := filepath.EvalSymlinks("/lib/x86_64-linux-gnu/libc.so.6")
	if err != nil {
		t.Fatal(err)
	}
	ldso, err := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
	if err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{libc: "lib/x86_64-linux-gnu/libc.so.6", ldso: "lib64/ld-linux-x86-64.so.2"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(dst)), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", src, filepath.Join(root, dst)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	s := startServed(t, func(hold string, args ...string) *exec.Cmd {
		if out, err := exec.Command("cp", hold, filepath.Join(root, "udshold")).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		// 1 s before allocating: the libc is probed when the process maps it, after its exec.
		return exec.Command("chroot", append([]string{root, "/udshold"}, append(args, "1000")...)...)
	})
	logs := s.stop()
	raw, err := os.ReadFile(s.report)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Processes []struct {
			PID        int                                   `json:"pid"`
			HeapByKind map[string]struct{ Calls, Bytes int } `json:"heap_calls_by_kind"`
			Exe        string                                `json:"exe"`
		} `json:"processes"`
		Sites []struct {
			PID   int    `json:"pid"`
			Kind  string `json:"kind"`
			Count int    `json:"count"`
			Stack []struct {
				Symbol string `json:"symbol"`
				Module string `json:"module"`
			} `json:"stack"`
		} `json:"sites"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Processes {
		if p.PID != s.pid {
			continue
		}
		if m := p.HeapByKind["malloc"]; m.Calls != holdBlocks || m.Bytes != holdBytes {
			t.Errorf("chrooted udshold: %d mallocs, %d bytes; want %d, %d\n%s", m.Calls, m.Bytes, holdBlocks, holdBytes, tail(logs))
		}
		for _, site := range rep.Sites {
			if site.PID == s.pid && site.Kind == "malloc" {
				var frames []string
				for _, f := range site.Stack {
					frames = append(frames, f.Symbol)
				}
				if !strings.Contains(strings.Join(frames, " "), "udshold!main") {
					t.Errorf("the malloc site's stack has no udshold!main: %v", frames)
				}
				t.Logf("chrooted udshold (exe %s): malloc stack %v", p.Exe, frames)
			}
		}
		return
	}
	t.Fatalf("no chrooted udshold pid %d in the report\n%s", s.pid, tail(logs))
}
