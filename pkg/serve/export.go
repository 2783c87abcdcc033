package serve

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// OTLPProfilesPath is where an OTLP/HTTP receiver takes profiles (the signal is still in development).
const OTLPProfilesPath = "/v1development/profiles"

// OTLPURL turns --otlp-endpoint (http[s]://host:port[/path], or host:port) into the URL profiles
// are posted to: the profiles path is added to an endpoint without a path, as OTLP exporters do.
func OTLPURL(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") {
		endpoint = "http://" + endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("parsing OTLP endpoint %q: use http://HOST:PORT or https://HOST:PORT[/PATH]", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = OTLPProfilesPath
	}
	return u.String(), nil
}

// exporter posts each interval's OTLP profiles, one request at a time, off the snapshot's path: a
// request still under way when the next interval comes makes that interval's profiles dropped
// (counted), so a slow collector never holds up the trace or piles up memory.
type exporter struct {
	url    string
	client *http.Client
	log    *slog.Logger
	next   chan []byte
	wg     sync.WaitGroup
	mu     sync.Mutex // guards closed: a late snapshot may send after close
	closed bool
	// Outcomes, for udstrace_otlp_exports_total.
	ok, failed, dropped atomic.Uint64
}

func newExporter(u string, log *slog.Logger) *exporter {
	e := &exporter{url: u, client: &http.Client{Timeout: 30 * time.Second}, log: log, next: make(chan []byte, 1)}
	e.wg.Add(1)
	go e.run()
	return e
}

// send queues one request body (protobuf ExportProfilesServiceRequest) without waiting.
func (e *exporter) send(body []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	select {
	case e.next <- body:
	default:
		e.dropped.Add(1)
		e.log.Warn("OTLP export dropped: the previous one is still under way", "url", e.url)
	}
}

func (e *exporter) run() {
	defer e.wg.Done()
	for body := range e.next {
		if err := e.post(body); err != nil {
			e.failed.Add(1)
			e.log.Warn("OTLP export failed", "url", e.url, "err", err)
			continue
		}
		e.ok.Add(1)
		e.log.Debug("OTLP export", "url", e.url, "bytes", len(body))
	}
}

func (e *exporter) post(body []byte) error {
	req, err := http.NewRequest(http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("posting profiles: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("posting profiles: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("posting profiles: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// close sends what is queued, waiting until ctx ends.
func (e *exporter) close(ctx context.Context) {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.next)
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
