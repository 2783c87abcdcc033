package session

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// A library dlopen()ed by its bare name, found through the program's RUNPATH ($ORIGIN), whose
// function allocates through two levels of its own; the program exits right after.
const (
	rpLib = `#include <stdlib.h>
#define NOINL __attribute__((noinline, noipa))
void *volatile rp_blocks[5];
static volatile int rp_calls; /* after the calls: no tail call drops a level */
NOINL static void rp_leaf(int i) { rp_blocks[i] = malloc(1700 + i); rp_calls++; }
NOINL static void rp_mid(void) { for (int i = 0; i < 5; i++) rp_leaf(i); rp_calls++; }
NOINL void rp_work(void) { rp_mid(); rp_calls++; }
`
	rpMain = `#include <dlfcn.h>
#include <stdio.h>
int main(void) {
	void *h = dlopen("librp.so", RTLD_NOW);
	if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
	void (*f)(void) = (void (*)(void))dlsym(h, "rp_work");
	f();
	return 0;
}
`
	rpBase, rpMallocs = 1700, 5
)

// TestDlopenRunpathStacks is issue #12 item 1: a short-lived program dlopen()s "librp.so" by name
// (RUNPATH $ORIGIN), and the library's mallocs must have every frame named, in the library, as
// gdb sees them, in full and count mode. Once in a short directory, once 30 directories deep,
// where the kernel sends the file's last name alone and the process is often gone before the
// mapping is read (then it is found beside the program, checked by device and inode).
func TestDlopenRunpathStacks(t *testing.T) {
	testenv.NeedRoot(t)
	shallow := t.TempDir()
	deep := shallow
	for i := range 30 {
		deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
	}
	for _, tc := range []struct{ name, dir string }{{"short-path", filepath.Join(shallow, "s")}, {"deep-path", deep}} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.MkdirAll(tc.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for d := tc.dir; d != filepath.Dir(shallow); d = filepath.Dir(d) {
				os.Chmod(d, 0o755)
			}
			lib, prog := filepath.Join(tc.dir, "librp.so"), filepath.Join(tc.dir, "rpmain")
			for name, src := range map[string]string{"rp.c": rpLib, "rpmain.c": rpMain} {
				if err := os.WriteFile(filepath.Join(tc.dir, name), []byte(src), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, c := range [][]string{
				{"gcc", "-g", "-O2", "-fPIC", "-shared", "-o", lib, filepath.Join(tc.dir, "rp.c")},
				{"gcc", "-g", "-O2", "-o", prog, filepath.Join(tc.dir, "rpmain.c"), "-ldl", "-Wl,-rpath,$ORIGIN"},
			} {
				if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %v\n%s", c, err, out)
				}
			}
			var gdb []gdbStack
			for _, g := range gdbMallocStacks(t, []string{prog}) {
				if g.bytes >= rpBase && g.bytes < rpBase+rpMallocs {
					gdb = append(gdb, g)
				}
			}
			if len(gdb) != rpMallocs {
				// Not fatal: the checks below stand without gdb (another tracer's uprobe on
				// malloc hides its calls from gdb).
				t.Errorf("gdb saw %d of the library's %d mallocs: no oracle for the frames", len(gdb), rpMallocs)
			}
			for _, mode := range stackModes {
				t.Run(mode, func(t *testing.T) {
					repeatRuns(t, func(t *testing.T) {
						o := testOptions(t)
						o.Mode = mode
						o.Command = []string{prog}
						rep, err := Run(context.Background(), o)
						if err != nil {
							t.Fatal(err)
						}
						v, _ := decodeView(t, rep)
						if len(v.Processes) != 1 {
							t.Fatalf("want one process, got %+v", v.Processes)
						}
						pid := v.Processes[0].PID
						want := []string{"malloc", "rp_leaf", "rp_mid", "rp_work", "main"}
						found := 0
						var all []string
						for _, s := range rep.Sites {
							if s.PID != pid || s.Kind != "malloc" {
								continue
							}
							all = append(all, fmt.Sprintf("%d calls, %d B: %s", s.Count, s.Bytes, frameNames(s.Stack)))
							if s.Count != 1 || s.Bytes < rpBase || s.Bytes >= rpBase+rpMallocs {
								continue
							}
							found++
							var names []string
							for i, f := range s.Stack {
								names = append(names, f.Function)
								if strings.HasPrefix(f.Function, "rp_") && (f.Module != lib || f.Line == 0 || filepath.Base(f.File) != "rp.c") {
									t.Errorf("malloc(%d): frame %d %s is %s:%d in module %q, want a line of rp.c in %s", s.Bytes, i, f.Function, f.File, f.Line, f.Module, lib)
								}
							}
							if norm := normalized(names); !slices.Equal(norm, want) {
								t.Errorf("malloc(%d): stack %s, want %s", s.Bytes, frameNames(s.Stack), strings.Join(want, " <- "))
							}
						}
						if found != rpMallocs {
							t.Errorf("%d sites of one malloc of %d to %d B, want %d; the malloc sites:\n  %s\nwarnings: %v",
								found, rpBase, rpBase+rpMallocs-1, rpMallocs, strings.Join(all, "\n  "), rep.Warnings)
						}
						for _, w := range rep.Warnings {
							if strings.Contains(w, "librp.so") {
								t.Errorf("warning: %s", w)
							}
						}
						if len(gdb) > 0 {
							checkAgainstGDB(t, v, pid, gdb)
						}
						if t.Failed() {
							keepReport(t, rep)
						}
					})
				})
			}
		})
	}
}
