package session

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/pkg/symbolize"
)

const strippedSrc = `#include <stdlib.h>
#define NOINL __attribute__((noinline, noipa))
void *volatile sink[8];
static volatile int calls; /* after the calls: no tail call drops a level */
NOINL static void leaf(int i) { sink[i] = malloc(5000 + i); calls++; }
NOINL static void mid(int i) { leaf(i); leaf(i + 1); calls++; }
int main(void) { for (int i = 0; i < 3; i++) mid(2 * i); return 0; }
`

// srcFrames are a site's frames in module mod, as function@file:line (inlined ones marked).
func srcFrames(s report.Site, mod string) []string {
	var out []string
	for _, f := range s.Stack {
		if f.Module != mod {
			continue
		}
		fr := fmt.Sprintf("%s@%s:%d", f.Function, filepath.Base(f.File), f.Line)
		if f.Inlined {
			fr += "[inlined]"
		}
		out = append(out, fr)
	}
	return out
}

// programSites maps each of the program's mallocs (5000+i bytes) to its frames in the program.
func programSites(t *testing.T, rep *report.Report, mod string) map[uint64][]string {
	t.Helper()
	out := map[uint64][]string{}
	for _, s := range rep.Sites {
		if s.Kind == "malloc" && s.Bytes >= 5000 && s.Bytes < 5006 {
			out[s.Bytes] = srcFrames(s, mod)
		}
	}
	if len(out) != 6 {
		t.Fatalf("%d of the program's 6 malloc sites, want 6; warnings %q", len(out), rep.Warnings)
	}
	return out
}

// TestDebuginfodStrippedStacks: a stripped program (strip --strip-all; its debug file nowhere
// here) traced with a real debuginfod server on 127.0.0.1 serving its debug file gets, frame for
// frame, the function names and source lines the unstripped program gets (the same code at the
// same offsets); without the server it has none. A server that accepts and never answers, listed
// first, costs its timeout: the report still comes, with the names from the second server and
// a warning naming the first.
func TestDebuginfodStrippedStacks(t *testing.T) {
	testenv.NeedRoot(t)
	dir, srv := t.TempDir(), t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "prog.c")
	if err := os.WriteFile(src, []byte(strippedSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	full, bare := filepath.Join(dir, "prog"), filepath.Join(dir, "prog.stripped")
	for _, c := range [][]string{
		{"gcc", "-g", "-O2", "-fomit-frame-pointer", "-o", full, src},
		{"objcopy", "--only-keep-debug", full, filepath.Join(srv, "prog.debug")},
		{"strip", "--strip-all", "-o", bare, full},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	f, err := os.Open(bare)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	b, err := symbolize.Open(f, st.Size(), symbolize.Options{Path: bare})
	f.Close()
	if err != nil || b.BuildID() == "" {
		t.Fatalf("build-id of %s: %v", bare, err)
	}
	url := testenv.Debuginfod(t, srv, b.BuildID())

	trace := func(t *testing.T, argv0 string, cfg symbolize.DebuginfodConfig) *report.Report {
		o := testOptions(t)
		o.Command = []string{argv0}
		o.Debuginfod = cfg
		rep, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	want := programSites(t, trace(t, full, symbolize.DebuginfodConfig{}), full)
	lines := 0
	for _, fr := range want {
		for _, s := range fr {
			if !strings.HasSuffix(s, ":0") {
				lines++
			}
		}
		if !slices.ContainsFunc(fr, func(s string) bool { return strings.HasPrefix(s, "leaf@prog.c:") }) {
			t.Fatalf("the unstripped program's stack %v has no leaf@prog.c: no oracle", fr)
		}
	}
	if lines == 0 {
		t.Fatal("the unstripped program's frames have no lines: no oracle")
	}
	t.Logf("the unstripped program's malloc(5000): %v", want[5000])

	check := func(t *testing.T, rep *report.Report) {
		got := programSites(t, rep, bare)
		for size, w := range want {
			if !slices.Equal(got[size], w) {
				t.Errorf("malloc(%d): frames in the stripped program %v, the unstripped %v", size, got[size], w)
			}
		}
	}
	t.Run("without-server", func(t *testing.T) {
		got := programSites(t, trace(t, bare, symbolize.DebuginfodConfig{}), bare)
		for size, fr := range got {
			for _, s := range fr {
				if strings.Contains(s, "prog.c") {
					t.Fatalf("malloc(%d): %v has lines without a server: the test tests nothing", size, fr)
				}
			}
		}
	})
	t.Run("server", func(t *testing.T) {
		rep := trace(t, bare, symbolize.DebuginfodConfig{URLs: []string{url}, CacheDir: filepath.Join(t.TempDir(), "c")})
		check(t, rep)
		for _, w := range rep.Warnings {
			if strings.Contains(w, "debuginfod") && !strings.Contains(w, "no debug file for") {
				t.Errorf("warning %q", w)
			}
		}
	})
	t.Run("hung-server-first", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			var held []net.Conn // accepted, never answered
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				held = append(held, c)
			}
		}()
		hung := "http://" + l.Addr().String()
		began := time.Now()
		rep := trace(t, bare, symbolize.DebuginfodConfig{URLs: []string{hung, url}, Timeout: time.Second, CacheDir: filepath.Join(t.TempDir(), "c")})
		t.Logf("traced and reported in %s with a 1s timeout", time.Since(began))
		check(t, rep)
		n := 0
		for _, w := range rep.Warnings {
			if strings.Contains(w, hung) {
				n++
				if !strings.Contains(w, "DEBUGINFOD_TIMEOUT") {
					t.Errorf("warning %q does not say the timeout was reached", w)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d warnings name the hung server %s, want 1: %q", n, hung, rep.Warnings)
		}
	})
}
