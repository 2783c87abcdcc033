package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// serveSoakInterval is the daemon's --interval in the serve soak: many cuts in a short soak.
const serveSoakInterval = 2 * time.Second

// checkServeSoak runs udstrace as a daemon (trace --serve on 127.0.0.1 with sampling, scoped to
// allocpattern by --comm) while a shell loop spawns short-lived allocpattern processes for d (pid
// churn: past --max-procs they fold), scraping /metrics and the interval profile every 5 s and
// sampling VmRSS every second: RSS must stay bounded and stop growing (as the soak's rule), every
// scrape must succeed, and the interval profile must not keep growing.
func checkServeSoak(e *env, d time.Duration) *result {
	res := newResult("serve-soak", fmt.Sprintf("trace --serve --sample-bytes 65536 --interval %s --max-procs 50 for %s under a spawning loop; VmRSS every 1 s, scrapes every 5 s", serveSoakInterval, d))
	progress("serve-soak: %s", res.tried)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		res.fail("%v", err)
		return res
	}
	addr := l.Addr().String()
	l.Close()
	u, err := e.startUd("serve-soak", []string{"trace", "--comm", "allocpattern", "--serve", addr, "--interval", serveSoakInterval.String(),
		"--sample-bytes", "65536", "--max-procs", "50", "-o", os.DevNull}, nil, true)
	if err != nil {
		res.fail("%v", err)
		return res
	}
	for deadline := time.Now().Add(2 * time.Minute); !strings.Contains(u.log(), `"msg":"tracing"`); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			u.cmd.Process.Kill()
			u.wait(time.Minute)
			res.fail("udstrace never said tracing: %s", u.lastLines(3))
			return res
		}
	}
	secs := int(d.Seconds())
	loop := exec.Command("sh", "-c", fmt.Sprintf(`end=$(( $(date +%%s) + %d )); n=0
while [ "$(date +%%s)" -lt "$end" ]; do %s 5 >/dev/null; n=$((n+1)); done; echo $n`, secs, filepath.Join(e.bin, "allocpattern")))
	var iterations strings.Builder
	loop.Stdout = &iterations
	if err := loop.Start(); err != nil {
		res.fail("%v", err)
		return res
	}
	loopDone := make(chan struct{})
	go func() { loop.Wait(); close(loopDone) }()

	var sizes []int64 // interval profile bytes, per scrape
	scrapes, failed := 0, 0
	var lastErr string
	get := func(path string) (int64, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return n, fmt.Errorf("%s: %s", path, resp.Status)
		}
		return n, err
	}
	tick := time.NewTicker(5 * time.Second)
scrape:
	for {
		select {
		case <-loopDone:
			break scrape
		case <-tick.C:
		}
		for _, path := range []string{"/metrics", "/debug/pprof/heap", "/debug/pprof/heap/interval"} {
			scrapes++
			n, err := get(path)
			if err != nil {
				failed++
				lastErr = err.Error()
				continue
			}
			if strings.HasSuffix(path, "/interval") {
				sizes = append(sizes, n)
			}
		}
	}
	tick.Stop()
	u.cmd.Process.Signal(syscall.SIGTERM)
	code, sig, timedOut := u.wait(2 * time.Minute)
	if code != 0 || timedOut {
		res.fail("udstrace exit %d signal %v timed out %v: %s", code, sig, timedOut, u.lastLines(3))
	}
	res.note("the loop ran allocpattern %s times", strings.TrimSpace(iterations.String()))
	if failed > 0 {
		res.fail("%d of %d scrapes failed, the last: %s", failed, scrapes, lastErr)
	}
	res.note("%d scrapes of /metrics, /debug/pprof/heap and /debug/pprof/heap/interval, %d failed", scrapes, failed)
	rss := u.rss
	if len(rss) < 8 || len(sizes) < 4 {
		res.fail("only %d RSS samples, %d interval profiles", len(rss), len(sizes))
		return res
	}
	judgeRSS(res, rss)
	sq := len(sizes) / 4
	s2, s4 := mean(sizes[sq:2*sq]), mean(sizes[len(sizes)-sq:])
	smax := int64(0)
	for _, v := range sizes {
		smax = max(smax, v)
	}
	res.note("interval profile: largest %d bytes; mean of 2nd quarter %.0f, of last quarter %.0f bytes; %d profiles", smax, s2, s4, len(sizes))
	if s4 > 1.5*s2 {
		res.fail("the interval profile keeps growing: last quarter %.0f bytes vs second quarter %.0f", s4, s2)
	}
	return res
}
