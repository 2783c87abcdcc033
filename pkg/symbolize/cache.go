package symbolize

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// Cache keeps parsed Binaries by a caller-chosen key (e.g. "dev:inode" or
// build-id) so each file is parsed once; safe for concurrent use.
type Cache struct {
	opts Options
	mu   sync.Mutex
	m    map[string]*cacheEntry
}

// cacheEntry lets concurrent Gets for one key wait for a single parse.
type cacheEntry struct {
	ready chan struct{}
	b     *Binary
	err   error
}

// NewCache returns a Cache whose defaults fill in zero fields of the Options
// given to Get.
func NewCache(opts Options) *Cache {
	return &Cache{opts: opts, m: map[string]*cacheEntry{}}
}

// Get returns the Binary for key, calling open and parsing only on the first
// request. A reader that is an io.Closer is closed once the Binary has loaded
// its tables (or by Close). Parse errors are cached; open errors are not, so
// a transient failure is retried.
func (c *Cache) Get(key string, open func() (io.ReaderAt, int64, error), opts Options) (*Binary, error) {
	c.mu.Lock()
	e, ok := c.m[key]
	if !ok {
		e = &cacheEntry{ready: make(chan struct{})}
		c.m[key] = e
	}
	c.mu.Unlock()
	if ok {
		<-e.ready
		return e.b, e.err
	}
	b, openFailed, err := c.open(open, c.merge(opts))
	e.b, e.err = b, err
	if openFailed {
		c.mu.Lock()
		delete(c.m, key)
		c.mu.Unlock()
	}
	close(e.ready)
	return b, err
}

func (c *Cache) open(open func() (io.ReaderAt, int64, error), opts Options) (b *Binary, openFailed bool, err error) {
	r, size, err := open()
	if err != nil {
		return nil, true, fmt.Errorf("opening %s: %w", opts.Path, err)
	}
	b, err = Open(r, size, opts)
	closer, _ := r.(io.Closer)
	if err != nil {
		if closer != nil {
			closer.Close()
		}
		return nil, false, err
	}
	b.closer = closer
	return b, false, nil
}

func (c *Cache) merge(o Options) Options {
	if len(o.DebugDirs) == 0 {
		o.DebugDirs = c.opts.DebugDirs
	}
	if o.Root == "" {
		o.Root = c.opts.Root
	}
	if o.Path == "" {
		o.Path = c.opts.Path
	}
	if o.Debuginfod == nil {
		o.Debuginfod = c.opts.Debuginfod
	}
	return o
}

// Len returns the number of cached entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Close releases readers of Binaries that never loaded and empties the cache.
func (c *Cache) Close() error {
	c.mu.Lock()
	m := c.m
	c.m = map[string]*cacheEntry{}
	c.mu.Unlock()
	var errs []error
	for _, e := range m {
		<-e.ready
		if e.b != nil {
			errs = append(errs, e.b.Close())
		}
	}
	return errors.Join(errs...)
}
