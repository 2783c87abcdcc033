package symbolize

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on what a debuginfod server can cost us. elfutils waits 90 s for a server and takes
// any size; a report should not wait that long, nor a hostile server fill the disk.
const (
	DefaultDebuginfodTimeout  = 10 * time.Second
	DefaultDebuginfodMaxTime  = 120 * time.Second
	DefaultDebuginfodMaxBytes = 1 << 30
	DefaultDebuginfodCache    = 4 << 30
)

// DebuginfodConfig says where and how to fetch debug files by build-id; no URLs: never.
type DebuginfodConfig struct {
	URLs []string // server base URLs (http or https)
	// Timeout is the longest a server may keep us waiting with nothing arriving: to connect, for
	// its answer to start, between reads. After one such failure the server is not asked again.
	Timeout  time.Duration
	MaxTime  time.Duration // the longest one download may take in all
	MaxBytes int64         // the largest debug file taken; a larger one is discarded
	// CacheDir keeps downloaded files as CacheDir/BUILDID/debuginfo (elfutils' layout). It must be
	// a private directory of this user's; "": a temporary one, removed by Close.
	CacheDir   string
	CacheBytes int64 // CacheDir is trimmed to this, least recently used first (0: not trimmed)
}

// DebuginfodEnv reads the configuration as elfutils' client does: DEBUGINFOD_URLS (space
// separated), DEBUGINFOD_TIMEOUT (seconds), DEBUGINFOD_MAXTIME (seconds), DEBUGINFOD_MAXSIZE
// (bytes) and DEBUGINFOD_CACHE_PATH; cacheDir is used when the last is unset ("": a temporary one).
func DebuginfodEnv(getenv func(string) string, cacheDir string) (DebuginfodConfig, error) {
	c := DebuginfodConfig{
		URLs: strings.Fields(getenv("DEBUGINFOD_URLS")), Timeout: DefaultDebuginfodTimeout,
		MaxTime: DefaultDebuginfodMaxTime, MaxBytes: DefaultDebuginfodMaxBytes, CacheDir: cacheDir,
		CacheBytes: DefaultDebuginfodCache,
	}
	var errs []error
	seconds := func(name string, into *time.Duration) {
		if v := getenv(name); v != "" {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				errs = append(errs, fmt.Errorf("reading %s: %q is not a positive number of seconds", name, v))
				return
			}
			*into = time.Duration(n) * time.Second
		}
	}
	seconds("DEBUGINFOD_TIMEOUT", &c.Timeout)
	seconds("DEBUGINFOD_MAXTIME", &c.MaxTime)
	if v := getenv("DEBUGINFOD_MAXSIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("reading DEBUGINFOD_MAXSIZE: %q is not a positive number of bytes", v))
		} else {
			c.MaxBytes = n
		}
	}
	if p := getenv("DEBUGINFOD_CACHE_PATH"); p != "" {
		c.CacheDir, c.CacheBytes = p, 0 // elfutils' own cache: its client cleans it
	}
	return c, errors.Join(errs...)
}

// Debuginfod fetches separate debug files from debuginfod servers, caching them on disk; safe for
// concurrent use. A file is kept only if its build-id is the one asked for.
type Debuginfod struct {
	cfg     DebuginfodConfig
	client  *http.Client
	tempDir bool

	mu       sync.Mutex
	down     map[string]bool     // servers not asked again (they failed in a way of their own)
	missing  map[string][]string // server -> build-ids it does not have
	warnings []string
	byID     map[string]*fetch
}

// fetch is one build-id's lookup, done once whoever asks first.
type fetch struct {
	once sync.Once
	path string
}

// NewDebuginfod returns a client for cfg, nil when cfg names no server.
func NewDebuginfod(cfg DebuginfodConfig) (*Debuginfod, error) {
	if len(cfg.URLs) == 0 {
		return nil, nil
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultDebuginfodTimeout)
	cfg.MaxTime = cmp.Or(cfg.MaxTime, DefaultDebuginfodMaxTime)
	cfg.MaxBytes = cmp.Or(cfg.MaxBytes, DefaultDebuginfodMaxBytes)
	d := &Debuginfod{cfg: cfg, down: map[string]bool{}, missing: map[string][]string{}, byID: map[string]*fetch{}}
	if d.cfg.CacheDir == "" {
		dir, err := os.MkdirTemp("", "udstrace-debuginfod-")
		if err != nil {
			return nil, fmt.Errorf("creating debuginfod cache: %w", err)
		}
		d.cfg.CacheDir, d.tempDir = dir, true
	} else if err := privateDir(d.cfg.CacheDir); err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout}
	d.client = &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConnsPerHost:   2,
	}}
	return d, nil
}

// Close removes a temporary cache.
func (d *Debuginfod) Close() error {
	if d == nil || !d.tempDir {
		return nil
	}
	return os.RemoveAll(d.cfg.CacheDir)
}

// Warnings says, one line per server and reason, what went wrong so far.
func (d *Debuginfod) Warnings() []string {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := slices.Clone(d.warnings)
	for _, u := range slices.Sorted(func(yield func(string) bool) {
		for u := range d.missing {
			if !yield(u) {
				return
			}
		}
	}) {
		ids := d.missing[u]
		out = append(out, fmt.Sprintf("debuginfod %s: no debug file for %d build-id(s) (%s)", u, len(ids), strings.Join(ids[:min(len(ids), 3)], ", ")))
	}
	return out
}

func (d *Debuginfod) warn(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.warnings = append(d.warnings, fmt.Sprintf(format, args...))
}

var hexID = regexp.MustCompile(`^[0-9a-f]{8,128}$`)

// Find returns the path of a debug file with this build-id, from the cache or a server; "" when
// none can be had. Each build-id is looked up once.
func (d *Debuginfod) Find(buildID string) string {
	if d == nil || !hexID.MatchString(buildID) {
		return ""
	}
	d.mu.Lock()
	f := d.byID[buildID]
	if f == nil {
		f = &fetch{}
		d.byID[buildID] = f
	}
	d.mu.Unlock()
	f.once.Do(func() { f.path = d.find(buildID) })
	return f.path
}

func (d *Debuginfod) find(id string) string {
	dir := filepath.Join(d.cfg.CacheDir, id)
	path := filepath.Join(dir, "debuginfo")
	if hasBuildID(path, id, d.cfg.MaxBytes) {
		now := time.Now()
		_ = os.Chtimes(path, now, now) // used: the last to go when the cache is trimmed
		return path
	}
	for _, u := range d.cfg.URLs {
		d.mu.Lock()
		skip := d.down[u]
		d.mu.Unlock()
		if skip {
			continue
		}
		if err := d.download(u, id, dir, path); err == nil {
			d.trim()
			return path
		} else if errors.Is(err, errNotFound) {
			d.mu.Lock()
			d.missing[u] = append(d.missing[u], id)
			d.mu.Unlock()
		} else if errors.Is(err, errServer) {
			d.mu.Lock()
			d.down[u] = true
			d.mu.Unlock()
			d.warn("debuginfod %s: %v; not asked again in this trace", u, errors.Unwrap(err))
		} else {
			d.warn("debuginfod %s: %v", u, err)
		}
	}
	return ""
}

var (
	errNotFound = errors.New("not found")
	errServer   = errors.New("server failed")
)

// serverErr marks a failure that is the server's (it does not answer, or not as a server should):
// it is not asked again.
type serverErr struct{ err error }

func (e serverErr) Error() string        { return e.err.Error() }
func (e serverErr) Unwrap() error        { return e.err }
func (e serverErr) Is(target error) bool { return target == errServer }

// download fetches one debug file into dir/debuginfo through a temporary file, keeping it only
// if it is an ELF file with the build-id asked for and no larger than MaxBytes.
func (d *Debuginfod) download(base, id, dir, path string) error {
	addr := strings.TrimRight(base, "/") + "/buildid/" + id + "/debuginfo"
	if !strings.HasPrefix(addr, "http://") && !strings.HasPrefix(addr, "https://") {
		return serverErr{fmt.Errorf("fetching build-id %s: only http and https servers are asked", id)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.MaxTime)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr, nil)
	if err != nil {
		return serverErr{fmt.Errorf("fetching build-id %s: %w", id, err)}
	}
	req.Header.Set("X-DEBUGINFOD-MAXSIZE", strconv.FormatInt(d.cfg.MaxBytes, 10))
	resp, err := d.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // it names the URL, which the warning does already
		}
		return serverErr{d.why(ctx, id, err)}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return errNotFound
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("fetching build-id %s: %s", id, resp.Status)
	case resp.ContentLength > d.cfg.MaxBytes:
		return fmt.Errorf("fetching build-id %s: %d bytes, more than the %d taken (DEBUGINFOD_MAXSIZE)", id, resp.ContentLength, d.cfg.MaxBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("caching build-id %s: %w", id, err)
	}
	tmp, err := os.CreateTemp(dir, ".part-*")
	if err != nil {
		return fmt.Errorf("caching build-id %s: %w", id, err)
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing
	body := &stallReader{r: resp.Body, timeout: d.cfg.Timeout, cancel: cancel}
	n, err := io.Copy(tmp, io.LimitReader(body, d.cfg.MaxBytes+1))
	body.stop()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if body.stalled.Load() {
			return serverErr{fmt.Errorf("fetching build-id %s: nothing arrived for %s (DEBUGINFOD_TIMEOUT)", id, d.cfg.Timeout)}
		}
		return serverErr{d.why(ctx, id, err)}
	}
	if n > d.cfg.MaxBytes {
		return fmt.Errorf("fetching build-id %s: more than the %d bytes taken (DEBUGINFOD_MAXSIZE): discarded", id, d.cfg.MaxBytes)
	}
	if got := fileBuildID(tmp.Name(), d.cfg.MaxBytes); got != id {
		if got == "" {
			return fmt.Errorf("fetching build-id %s: the answer is not an ELF file with a build-id: discarded", id)
		}
		return fmt.Errorf("fetching build-id %s: the answer has build-id %s: discarded", id, got)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("caching build-id %s: %w", id, err)
	}
	return nil
}

// why says why a request for build-id id failed, naming the bound it ran into if it was ours.
func (d *Debuginfod) why(ctx context.Context, id string, err error) error {
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("fetching build-id %s: not done within %s (DEBUGINFOD_MAXTIME): %w", id, d.cfg.MaxTime, err)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("fetching build-id %s: no answer within %s (DEBUGINFOD_TIMEOUT): %w", id, d.cfg.Timeout, err)
	}
	return fmt.Errorf("fetching build-id %s: %w", id, err)
}

// stallReader cancels a download when nothing arrives for timeout: a server that sends its
// headers and then a byte now and then, or nothing, costs at most that per wait.
type stallReader struct {
	r       io.Reader
	timeout time.Duration
	cancel  context.CancelFunc
	timer   *time.Timer
	stalled atomic.Bool
}

func (s *stallReader) Read(p []byte) (int, error) {
	if s.timer == nil {
		s.timer = time.AfterFunc(s.timeout, func() {
			s.stalled.Store(true)
			s.cancel()
		})
	} else {
		s.timer.Reset(s.timeout)
	}
	n, err := s.r.Read(p)
	s.timer.Stop()
	return n, err
}

func (s *stallReader) stop() {
	if s.timer != nil {
		s.timer.Stop()
	}
}
