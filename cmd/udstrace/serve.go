package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/serve"
	"github.com/udstrace/udstrace/pkg/session"
)

// defaultServeInterval is how often --serve cuts its profiles and metrics without --interval:
// Prometheus's default scrape interval is 15 s, so every scrape sees new figures.
const defaultServeInterval = 10 * time.Second

// serveAddrProblem checks --serve's HOST:PORT, "" when well-formed.
func serveAddrProblem(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("--serve %q: use HOST:PORT, e.g. 127.0.0.1:9464 or :9464 (every address)", addr)
	}
	return ""
}

// otlpProblem checks --otlp-endpoint, "" when well-formed.
func otlpProblem(endpoint string) string {
	if _, err := serve.OTLPURL(endpoint); err != nil {
		return "--otlp-endpoint: " + strings.TrimPrefix(err.Error(), "parsing OTLP endpoint ")
	}
	return ""
}

// daemon reports whether the trace serves or exports its snapshots (--serve, --otlp-endpoint).
func (o *options) daemon() bool { return o.serve != "" || o.otlp != "" }

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// daemonLog is --serve's logger: JSON lines when stderr is not a terminal (a journal, a
// container's log), text otherwise; info level (debug with --debug), as a daemon says when it
// starts serving and why it stopped.
func daemonLog(debug bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug {
		opts.Level = slog.LevelDebug
	}
	if isTerminal(os.Stderr) {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

// startServe binds --serve's address, starts the --otlp-endpoint exporter and chains the
// server's Update to sopts's OnInterval (after the stream's, if any); stop ends both.
func startServe(o options, sopts *session.Options) (stop func(), err error) {
	sopts.Log = daemonLog(o.debug)
	otlp := ""
	if o.otlp != "" {
		otlp, _ = serve.OTLPURL(o.otlp) // validated
	}
	srv, err := serve.New(serve.Options{Addr: o.serve, OTLP: otlp, Log: sopts.Log})
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	tracing := sopts.OnTracing
	sopts.OnTracing = func() {
		if tracing != nil {
			tracing()
		}
		sopts.Log.Info("tracing", "otlp_endpoint", otlp, "interval", o.interval.String(), "sample_bytes", o.sample, "max_procs", o.maxProcs, "max_sites", o.maxSites)
	}
	prev := sopts.OnInterval
	sopts.Interval = o.interval
	sopts.OnInterval = func(r *report.Report) {
		if prev != nil {
			prev(r)
		}
		srv.Update(r)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Close(ctx)
		sopts.Log.Info("stopped serving", "addr", srv.Addr())
	}, nil
}
