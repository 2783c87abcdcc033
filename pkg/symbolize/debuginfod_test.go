package symbolize

import (
	"debug/elf"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
)

const debuginfodSrc = `#include <stdlib.h>
#define NOINL __attribute__((noinline, noipa))
void *volatile sink;
static inline int twice(int x) { return 2 * x + (int)(long)sink; }
NOINL void leaf(int i) { sink = malloc(4000 + twice(i)); }
NOINL void mid(int i) { leaf(i); leaf(i + 1); }
int main(void) { for (int i = 0; i < 3; i++) mid(2 * i); return 0; }
`

// stripped builds the test program, keeps its debug part (objcopy --only-keep-debug) in srvDir
// for a server and strips the binary (strip --strip-all keeps the build-id note). It returns
// the unstripped binary, the stripped one and the build-id.
func stripped(t *testing.T, srvDir string) (full, bare, id string) {
	t.Helper()
	dir := t.TempDir()
	full = compile(t, "gcc", dir, "prog.c", debuginfodSrc, "-g", "-O2")
	run(t, "objcopy", "--only-keep-debug", full, filepath.Join(srvDir, "prog.debug"))
	bare = filepath.Join(dir, "prog.stripped")
	run(t, "strip", "--strip-all", "-o", bare, full)
	id = openPath(t, bare, Options{}).BuildID()
	if id == "" || id != openPath(t, full, Options{}).BuildID() {
		t.Fatalf("stripped build-id %q, want the unstripped one", id)
	}
	return full, bare, id
}

// textAddrs are addresses all through the program's own functions, from its symbol table.
func textAddrs(t *testing.T, path string) []uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Size > 0 && (s.Name == "main" || s.Name == "mid" || s.Name == "leaf") {
			for a := s.Value; a < s.Value+s.Size; a += 3 {
				out = append(out, a)
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no text of main, mid, leaf in %s", path)
	}
	return out
}

// TestDebuginfodServer: a stripped binary whose debug file is nowhere here (an empty debug dir, no
// debuglink) gets it from a real debuginfod server by build-id, and then symbolizes every
// address of its functions exactly as the unstripped binary does: names, inlined frames, lines.
// A second client with the same cache finds it with the server gone; a cached file of another
// build-id is not trusted.
func TestDebuginfodServer(t *testing.T) {
	srv := t.TempDir()
	full, bare, id := stripped(t, srv)
	url := testenv.Debuginfod(t, srv, id)
	cache := filepath.Join(t.TempDir(), "debuginfod")
	noDir := []string{t.TempDir()}

	want := openPath(t, full, Options{DebugDirs: noDir})
	local := openPath(t, bare, Options{DebugDirs: noDir})
	addrs := textAddrs(t, full)
	if fr := local.Symbolize(addrs[0]); len(fr) != 0 && fr[len(fr)-1].Line != 0 {
		t.Fatalf("the stripped binary has lines without a server (%+v): the test tests nothing", fr)
	}

	d, err := NewDebuginfod(DebuginfodConfig{URLs: []string{url}, CacheDir: cache, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b := openPath(t, bare, Options{DebugDirs: noDir, Debuginfod: d})
	if fr := b.Symbolize(addrs[0]); len(fr) != 0 && fr[len(fr)-1].Line != 0 {
		t.Errorf("a lookup before FetchDebug already has lines %+v: it waited for the server", fr)
	}
	b.FetchDebug()
	if got := b.DebugFile(); got != filepath.Join(cache, id, "debuginfo") {
		t.Errorf("DebugFile = %q, want the cached download", got)
	}
	lines := 0
	for _, a := range addrs {
		g, w := b.Symbolize(a), want.Symbolize(a)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%#x: %+v, the unstripped binary %+v", a, g, w)
		}
		if len(w) > 0 && w[len(w)-1].Line > 0 {
			lines++
		}
	}
	if lines == 0 {
		t.Fatal("the unstripped binary gave no lines: no oracle")
	}
	if w := d.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q, want none", w)
	}

	// The cache, with no server that answers.
	dead, err := NewDebuginfod(DebuginfodConfig{URLs: []string{"http://127.0.0.1:1"}, CacheDir: cache, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := openPath(t, bare, Options{DebugDirs: noDir, Debuginfod: dead})
	c.FetchDebug()
	if g, w := c.Symbolize(addrs[len(addrs)/2]), want.Symbolize(addrs[len(addrs)/2]); !reflect.DeepEqual(g, w) {
		t.Errorf("from the cache: %+v, want %+v", g, w)
	}

	// A cached file of another build-id (the unstripped binary of another program) is not used.
	other := compile(t, "gcc", t.TempDir(), "other.c", "int main(void) { return 1; }\n", "-g")
	data, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, id, "debuginfo"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	wrong, err := NewDebuginfod(DebuginfodConfig{URLs: []string{"http://127.0.0.1:1"}, CacheDir: cache, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if p := wrong.Find(id); p != "" {
		t.Errorf("a cached file of another build-id was taken: %s", p)
	}
	if w := wrong.Warnings(); len(w) != 1 || !strings.Contains(w[0], "127.0.0.1:1") {
		t.Errorf("warnings %q, want one naming the server that did not answer", w)
	}
}

// TestDebuginfodHungServer: a server that accepts and never answers costs one wait of the
// timeout, is not asked again for the next build-ids, and is named in one warning.
func TestDebuginfodHungServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			defer c.Close() // held open, never answered
		}
	}()
	url := "http://" + l.Addr().String()
	d, err := NewDebuginfod(DebuginfodConfig{URLs: []string{url}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	done := make(chan string, 1)
	began := time.Now()
	go func() {
		for _, id := range []string{"0123456789abcdef0123", "1123456789abcdef0123", "2123456789abcdef0123"} {
			if p := d.Find(id); p != "" {
				done <- p
				return
			}
		}
		done <- ""
	}()
	select {
	case p := <-done:
		if p != "" {
			t.Errorf("found %s on a server that never answers", p)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("a server that never answers hung the lookups")
	}
	t.Logf("three lookups took %s with a timeout of 1s", time.Since(began))
	if n := accepted.Load(); n != 1 {
		t.Errorf("the hung server was asked %d times, want once", n)
	}
	w := d.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], url) || !strings.Contains(w[0], "DEBUGINFOD_TIMEOUT") {
		t.Errorf("warnings %q, want one naming %s and the timeout", w, url)
	}
}

// TestDebuginfodHostileAnswers: an answer larger than the size bound is cut off at the bound and
// discarded; an ELF file of another build-id is discarded; neither lands in the cache.
func TestDebuginfodHostileAnswers(t *testing.T) {
	other := compile(t, "gcc", t.TempDir(), "other.c", "int main(void) { return 1; }\n", "-g")
	elfData, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 1 << 20
	var sent atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/endless/buildid/", func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		for range 1 << 14 { // 1 GiB at most, unless the client stops reading
			n, err := w.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/wrong/buildid/", func(w http.ResponseWriter, r *http.Request) { w.Write(elfData) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(l)
	defer hs.Close()
	base := "http://" + l.Addr().String()
	cache := filepath.Join(t.TempDir(), "c")
	const id = "00112233445566778899aabbccddeeff00112233"
	for _, tc := range []struct{ path, says string }{{"/endless", "DEBUGINFOD_MAXSIZE"}, {"/wrong", "discarded"}} {
		d, err := NewDebuginfod(DebuginfodConfig{URLs: []string{base + tc.path}, CacheDir: cache, MaxBytes: limit, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if p := d.Find(id); p != "" {
			t.Errorf("%s: took %s", tc.path, p)
		}
		if w := d.Warnings(); len(w) != 1 || !strings.Contains(w[0], tc.says) || !strings.Contains(w[0], base+tc.path) {
			t.Errorf("%s: warnings %q, want one naming the server and saying %q", tc.path, w, tc.says)
		}
	}
	// What the server got to write is the bound plus what the socket buffers took.
	if n := sent.Load(); n > 64<<20 {
		t.Errorf("the endless server wrote %d bytes, want the client to stop near %d", n, limit)
	}
	ents, _ := os.ReadDir(filepath.Join(cache, id))
	for _, e := range ents {
		t.Errorf("left in the cache: %s", e.Name())
	}
}
