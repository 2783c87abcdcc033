package symbolize

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
)

// closeCounter is a ReaderAt that records Close.
type closeCounter struct {
	*bytes.Reader
	closed atomic.Int32
}

func (c *closeCounter) Close() error { c.closed.Add(1); return nil }

func TestCacheConcurrent(t *testing.T) {
	data, err := os.ReadFile(libcPath)
	if err != nil {
		t.Skip("no system libc")
	}
	c := NewCache(Options{DebugDirs: []string{t.TempDir()}})
	var opens atomic.Int32
	rc := &closeCounter{Reader: bytes.NewReader(data)}
	open := func() (io.ReaderAt, int64, error) {
		opens.Add(1)
		return rc, int64(len(data)), nil
	}
	addr, _ := elfSym(t, libcPath, "malloc")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := c.Get("libc", open, Options{Path: libcPath})
			if err != nil {
				t.Error(err)
				return
			}
			if got := outerName(b.Symbolize(addr)); got != "malloc" {
				t.Errorf("got %q", got)
			}
		}()
	}
	wg.Wait()
	if n := opens.Load(); n != 1 {
		t.Errorf("open called %d times", n)
	}
	if n := rc.closed.Load(); n != 1 {
		t.Errorf("reader closed %d times after load", n)
	}
	if c.Len() != 1 {
		t.Errorf("Len = %d", c.Len())
	}
}

func TestCacheErrors(t *testing.T) {
	c := NewCache(Options{})
	calls := 0
	failing := func() (io.ReaderAt, int64, error) { calls++; return nil, 0, errors.New("gone") }
	for i := 0; i < 2; i++ {
		if _, err := c.Get("k", failing, Options{}); err == nil {
			t.Fatal("expected error")
		}
	}
	if calls != 2 {
		t.Errorf("open errors should not be cached: %d calls", calls)
	}
	garbage := func() (io.ReaderAt, int64, error) { calls++; return bytes.NewReader([]byte("nope")), 4, nil }
	c.Get("g", garbage, Options{})
	c.Get("g", garbage, Options{})
	if calls != 3 {
		t.Errorf("parse errors should be cached: %d calls", calls)
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
}
