package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestServeAttach: attach PID --serve serves a running process's figures: once it allocates
// (after udstrace said tracing), /metrics shows exactly the heap bytes it holds.
func TestServeAttach(t *testing.T) {
	testenv.NeedRoot(t)
	bin, hold := buildCLI(t), buildHold(t)
	h := exec.Command(hold, strconv.Itoa(holdBlocks), "-")
	hin, _ := h.StdinPipe()
	hout, _ := h.StdoutPipe()
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Process.Kill(); h.Wait() })
	cmd := exec.Command(bin, "attach", strconv.Itoa(h.Process.Pid), "--serve", "127.0.0.1:0", "--interval", "1s",
		"-f", "json", "-o", filepath.Join(t.TempDir(), "final.json"))
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGINT); cmd.Wait() })
	var addr string
	sc := bufio.NewScanner(stderr)
	for tracing := false; addr == "" || !tracing; {
		if !sc.Scan() {
			t.Fatal("udstrace attach --serve ended before serving and tracing")
		}
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l["msg"] {
		case "serving":
			addr, _ = l["addr"].(string)
		case "tracing":
			tracing = true
		}
	}
	go io.Copy(io.Discard, stderr)
	hin.Write([]byte("g")) // now allocate
	if line, _ := bufio.NewReader(hout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("udshold said %q", line)
	}
	gauge := regexp.MustCompile(`(?m)^udstrace_outstanding_bytes\{[^}]*pid="` + strconv.Itoa(h.Process.Pid) + `"[^}]*source="heap"[^}]*\} (\S+)$`)
	var got float64
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := gauge.FindSubmatch(b); m != nil {
			got, _ = strconv.ParseFloat(string(m[1]), 64)
			if got == holdBytes {
				return
			}
		}
	}
	t.Errorf("attach --serve: outstanding heap bytes of the attached process %v, want %d", got, holdBytes)
}
