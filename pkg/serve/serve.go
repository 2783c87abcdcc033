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
	"go.opentelemetry.io/collector/pdata/pprofile"

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
	Addr string       // HOST:PORT to serve on; "": no HTTP (OTLP only)
	OTLP string       // URL to post each interval's OTLP profiles to (OTLPURL); "": none
	Log  *slog.Logger // nil: slog.Default()
}

// Server serves the latest snapshot handed to Update. Only the latest snapshot's metrics and
// its two encoded profiles are kept, so its memory does not grow with the trace's length.
type Server struct {
	log *slog.Logger
	col *collector
	ln  net.Listener
	srv *http.Server

	prof profiler  // Update's only: not locked
	otlp *exporter // nil: no --otlp-endpoint

	mu       sync.Mutex
	heap, iv []byte // gzipped pprof
	at       time.Time
}

// New binds o.Addr (port 0 picks one), so that a bad address fails before tracing, and starts
// the OTLP exporter.
func New(o Options) (*Server, error) {
	s := &Server{log: o.Log, col: &collector{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if o.OTLP != "" {
		s.otlp = newExporter(o.OTLP, s.log)
		s.col.otlp = s.otlp
	}
	if o.Addr == "" {
		return s, nil
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", o.Addr, err)
	}
	s.ln = ln
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

// Addr is the address bound, its port chosen when the one asked was 0; "" without HTTP.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Serve serves until Close (without HTTP: returns at once).
func (s *Server) Serve() {
	if s.ln == nil {
		return
	}
	s.log.Info("serving", "addr", s.Addr(), "metrics", MetricsPath, "heap", HeapPath, "interval", IntervalHeapPath)
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("serving", "addr", s.Addr(), "err", err)
	}
}

// Close stops serving and exporting, letting requests under way finish until ctx ends.
func (s *Server) Close(ctx context.Context) error {
	if s.otlp != nil {
		s.otlp.close(ctx)
	}
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

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
	sizes := map[string]int{"heap": len(heap), "interval": len(ivb)}
	if s.otlp != nil {
		body, err := (&pprofile.ProtoMarshaler{}).MarshalProfiles(OTLPProfiles(iv, r))
		if err != nil {
			s.log.Error("encoding OTLP profiles", "err", err)
		} else {
			sizes["otlp"] = len(body)
			s.otlp.send(body)
		}
	}
	s.col.set(metricsOf(r, sizes))
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
