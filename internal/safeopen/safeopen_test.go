package safeopen

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// openBounded runs Open, failing the test (not hanging it) if it does not return: a blocked
// open is the bug these tests are about.
func openBounded(t *testing.T, path string, o Options) (*os.File, error) {
	t.Helper()
	type res struct {
		f   *os.File
		err error
	}
	ch := make(chan res, 1)
	go func() {
		f, err := Open(path, o)
		ch <- res{f, err}
	}()
	select {
	case r := <-ch:
		if r.f != nil {
			t.Cleanup(func() { r.f.Close() })
		}
		return r.f, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Open(%s) still blocked after 10s", path)
		return nil, nil
	}
}

func TestRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifolink")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge")
	if err := os.WriteFile(huge, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, DefaultMaxSize+1); err != nil { // sparse: no blocks written
		t.Fatal(err)
	}
	cases := []struct {
		path   string
		o      Options
		err    error
		phrase string
	}{
		{fifo, Options{}, ErrNotRegular, "a FIFO"},
		{fifo, Options{Follow: true}, ErrNotRegular, "a FIFO"},
		{fifoLink, Options{Follow: true}, ErrNotRegular, "a FIFO"},
		{link, Options{}, ErrNotRegular, "a symbolic link"},
		{"/dev/zero", Options{Follow: true}, ErrNotRegular, "a character device"},
		{dir, Options{}, ErrNotRegular, "a directory"},
		{huge, Options{}, ErrTooLarge, "at most"},
		{regular, Options{MaxSize: 3}, ErrTooLarge, "4 bytes"},
		{filepath.Join(dir, "missing"), Options{}, os.ErrNotExist, "no such file"},
	}
	for _, c := range cases {
		f, err := openBounded(t, c.path, c.o)
		if f != nil || !errors.Is(err, c.err) {
			t.Errorf("Open(%s, %+v) = %v, %v; want %v", c.path, c.o, f, err, c.err)
			continue
		}
		if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.phrase) {
			t.Errorf("Open(%s): error %q should name the path and say %q", c.path, err, c.phrase)
		}
	}
	if _, err := ReadFile(huge, Options{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadFile(huge sparse file) = %v, want ErrTooLarge", err)
	}
}

func TestOpensRegular(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("#!/bin/sh -e\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		path string
		o    Options
	}{{regular, Options{}}, {link, Options{Follow: true}}} {
		b, err := ReadFile(p.path, p.o)
		if err != nil || string(b) != "#!/bin/sh -e\necho hi\n" {
			t.Errorf("ReadFile(%s) = %q, %v", p.path, b, err)
		}
	}
	if b, err := ReadHead(regular, 2, Options{}); err != nil || string(b) != "#!" {
		t.Errorf("ReadHead(2) = %q, %v", b, err)
	}
	// The opened file is the inode checked, not what the path names by the time it is read.
	f, err := openBounded(t, regular, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(regular); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(regular, 0o644); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "#!" {
		t.Errorf("reading the opened file after its path became a FIFO: %q, %v", buf, err)
	}
	// The kernel's own links are followed to the file they name.
	if _, err := openBounded(t, "/proc/self/exe", Options{Follow: true}); err != nil {
		t.Errorf("Open(/proc/self/exe): %v", err)
	}
}

// TestELFWithoutSections parses a copy of a real program whose e_shoff points past the end, as
// the kernel still runs it: the program headers and the libraries it needs are read, compared
// with the intact file's.
func TestELFWithoutSections(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src := "/bin/true"
	if _, err := os.Stat(src); err != nil {
		src = exe
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	good, err := OpenELF(src, Options{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if good.Lost != nil {
		t.Fatalf("intact %s: Lost = %v", src, good.Lost)
	}
	binary.LittleEndian.PutUint64(data[0x28:], uint64(len(data))+4096)
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := elf.Open(bad); err == nil {
		t.Fatal("debug/elf opens the patched file: the test does not test anything")
	}
	e, err := OpenELF(bad, Options{})
	if err != nil {
		t.Fatalf("OpenELF(bad e_shoff): %v", err)
	}
	defer e.Close()
	if e.Lost == nil || !strings.Contains(e.Lost.Error(), "section headers") {
		t.Errorf("Lost = %v, want it to say the section headers are unreadable", e.Lost)
	}
	if len(e.Sections) != 0 || len(e.Progs) != len(good.Progs) {
		t.Errorf("%d sections, %d program headers; want 0 and %d", len(e.Sections), len(e.Progs), len(good.Progs))
	}
	want, _ := good.ImportedLibraries()
	if got := DynStrings(e.File, elf.DT_NEEDED); len(want) == 0 || !slices.Equal(got, want) {
		t.Errorf("DT_NEEDED from PT_DYNAMIC = %q, from the sections %q", got, want)
	}
}
