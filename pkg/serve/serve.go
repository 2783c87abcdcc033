// Package serve exposes a live trace over HTTP: Prometheus metrics and pprof profiles, cut per interval.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/udstrace/udstrace/pkg/report"
)

// Paths served.
const (
	MetricsPath      = "/metrics"
	HeapPath         = "/debug/pprof/heap"          // cumulative since the trace began
	IntervalHeapPath = "/debug/pprof/heap/interval" // the last interval's
)

// Options configure a Server.
type Options struct {
	Log *slog.Logger // nil: slog.Default()
}

// Server serves the latest snapshot handed to Update. Only the latest snapshot's metrics and
// its two encoded profiles are kept, so its memory does not grow with the trace's length.
type Server struct {
	opts Options
	log  *slog.Logger
	col  *collector
	ln   net.Listener
	srv  *http.Server

	prof profiler // Update's only: not locked

	mu       sync.Mutex
	heap, iv []byte // gzipped pprof
	at       time.Time
}

// Listen binds addr (host:port; port 0 picks one) so that a bad address fails before tracing.
func Listen(addr string, o Options) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	s := &Server{opts: o, log: o.Log, col: &collector{}, ln: ln}
	if s.log == nil {
		s.log = slog.Default()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.col, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError)}))
	mux.HandleFunc(HeapPath, func(w http.ResponseWriter, r *http.Request) { s.serveProfile(w, false) })
	mux.HandleFunc(IntervalHeapPath, func(w http.ResponseWriter, r *http.Request) { s.serveProfile(w, true) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/debug/pprof/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "udstrace\n%s\tPrometheus metrics\n%s\tpprof heap profile since the trace began\n%s\tpprof heap profile of the last interval\n",
			MetricsPath, HeapPath, IntervalHeapPath)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	return s, nil
}

// Addr is the address bound, its port chosen when the one asked was 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until Close.
func (s *Server) Serve() {
	s.log.Info("serving", "addr", s.Addr(), "metrics", MetricsPath, "heap", HeapPath, "interval", IntervalHeapPath)
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("serving", "addr", s.Addr(), "err", err)
	}
}

// Close stops serving, letting requests under way finish until ctx ends.
func (s *Server) Close(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Update takes a snapshot (a Builder.Snapshot's report, whose stacks it symbolizes) as the
// figures to serve; the previous snapshot's are dropped. Not safe for concurrent use.
func (s *Server) Update(r *report.Report) {
	start := time.Now()
	cum, iv := s.prof.cut(r)
	heap, err1 := encode(cum)
	ivb, err2 := encode(iv)
	if err := errors.Join(err1, err2); err != nil {
		s.log.Error("cutting profiles", "err", err)
		return
	}
	s.col.set(metricsOf(r, map[string]int{"heap": len(heap), "interval": len(ivb)}))
	s.mu.Lock()
	s.heap, s.iv, s.at = heap, ivb, r.End
	s.mu.Unlock()
	s.log.Debug("snapshot", "processes", len(r.Processes), "sites", len(r.Sites), "heap_profile_bytes", len(heap),
		"interval_profile_bytes", len(ivb), "lost_events", r.LostEvents, "took", time.Since(start))
}

func (s *Server) serveProfile(w http.ResponseWriter, interval bool) {
	s.mu.Lock()
	b, at := s.heap, s.at
	if interval {
		b = s.iv
	}
	s.mu.Unlock()
	if b == nil {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "no snapshot yet: the first is taken one --interval after tracing starts", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="heap.pb.gz"`)
	w.Header().Set("Last-Modified", at.UTC().Format(http.TimeFormat))
	_, _ = w.Write(b)
}
