package report

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/udstrace/udstrace/pkg/event"
)

// exportReport has inlined frames, an unknown function, an anonymous frame, no stack, mmap, brk and a free.
func exportReport(t *testing.T) *Report {
	t.Helper()
	return echoReport(t, echoMeta(),
		al(500, 12, event.Mmap, 1<<20, 0x7000000, stMmap),
		al(510, 12, event.Brk, 1<<30, 0, stBrk),
		al(520, 11, event.Malloc, 24, 0x90, stk(fMalloc, fr(exePath, 0x4242), fMain)),
		al(530, 11, event.Malloc, 8, 0xa0, stk(fMalloc, fAnon)),
		al(540, 11, event.Calloc, 3, 0xb0, nil),
		al(550, 12, event.Free, 0, 0x20, stMain), // the fdopen block: alloc and inuse differ
	)
}

// siteTotals sums the JSON's per-site figures: count, bytes, outstanding count, outstanding bytes.
func siteTotals(r *Report) [4]int64 {
	var t [4]int64
	for _, s := range r.Sites {
		t[0] += int64(s.Count)
		t[1] += int64(s.Bytes)
		t[2] += int64(s.OutstandingCount)
		t[3] += int64(s.OutstandingBytes)
	}
	return t
}

func TestPprofParsesBack(t *testing.T) {
	r := exportReport(t)
	var buf bytes.Buffer
	if err := r.WritePprof(&buf); err != nil {
		t.Fatal(err)
	}
	if b := buf.Bytes(); len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("not gzipped: % x", b[:min(len(b), 4)])
	}
	p, err := profile.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, st := range p.SampleType {
		types = append(types, st.Type+"/"+st.Unit)
	}
	if want := []string{"alloc_objects/count", "alloc_space/bytes", "inuse_objects/count", "inuse_space/bytes"}; !equal(types, want) {
		t.Errorf("sample types %v", types)
	}
	if len(p.Sample) != len(r.Sites) {
		t.Fatalf("%d samples for %d sites", len(p.Sample), len(r.Sites))
	}
	var got [4]int64
	bySite := map[int64]*profile.Sample{}
	for _, s := range p.Sample {
		for i, v := range s.Value {
			got[i] += v
		}
		bySite[s.NumLabel["site"][0]] = s
	}
	if want := siteTotals(r); got != want || want[1] == want[3] {
		t.Errorf("totals %v, JSON %v", got, want)
	}
	names := func(l *profile.Location) (out []string) {
		for _, ln := range l.Line {
			out = append(out, ln.Function.Name)
		}
		return out
	}
	for _, site := range r.Sites {
		s := bySite[int64(site.ID)]
		if s == nil || s.NumLabel["pid"][0] != int64(site.PID) || s.Label["comm"][0] != site.Comm || s.Label["kind"][0] != site.Kind {
			t.Fatalf("site %d: sample %+v", site.ID, s)
		}
		leaf := names(s.Location[0])
		switch {
		case len(site.Stack) > 2 && site.Stack[2].Inlined:
			if l := s.Location[2]; !equal(names(l), []string{"inlined_helper", "_IO_doallocbuf"}) || l.Line[0].Line != 3 || l.Line[0].Function.Filename != "y.h" {
				t.Errorf("site %d: inlined location %v %+v", site.ID, names(l), l.Line)
			}
			if m := s.Location[0].Mapping; m == nil || m.File != libcPath || !m.HasFunctions {
				t.Errorf("site %d: leaf mapping %+v", site.ID, m)
			}
		case site.Kind == "brk":
			if !equal(leaf, []string{"__brk"}) || s.Value[1] != 1<<30 {
				t.Errorf("brk sample %v %v", leaf, s.Value)
			}
		case len(site.Stack) == 0:
			if len(s.Location) != 1 || !equal(leaf, []string{"(no stack)"}) {
				t.Errorf("no-stack sample %v", leaf)
			}
		case site.Bytes == 24:
			if n := names(s.Location[1]); !equal(n, []string{"echo-client+0x4242"}) || s.Location[1].Line[0].Line != 0 {
				t.Errorf("unknown function %v", n)
			}
		case site.Bytes == 8:
			if l := s.Location[1]; l.Mapping != nil || !equal(names(l), []string{"0xdead0000"}) {
				t.Errorf("anonymous frame %v %+v", names(l), l.Mapping)
			}
		}
		if len(site.Stack) > 0 && leaf[0] != site.Stack[0].Function {
			t.Errorf("site %d: leaf %v, want %s", site.ID, leaf, site.Stack[0].Function)
		}
	}
	if p.Mapping[0].File != exePath {
		t.Errorf("first mapping %s, want the executable", p.Mapping[0].File)
	}
}

// TestPprofTool checks that the go tool reads the profile and prints the JSON's totals.
func TestPprofTool(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go tool pprof")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	r := exportReport(t)
	file := filepath.Join(t.TempDir(), "heap.pb.gz")
	var buf bytes.Buffer
	if err := r.WritePprof(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	want := siteTotals(r)
	total := regexp.MustCompile(`Showing nodes accounting for \S+, \S+ of (\d+)B total`)
	for idx, name := range map[int]string{1: "alloc_space", 3: "inuse_space"} {
		// -unit=B keeps the totals exact; no symbolization: the profile carries its names.
		out, err := exec.Command(goBin, "tool", "pprof", "-top", "-unit=B", "-nodefraction=0", "-symbolize=none", "-sample_index="+name, file).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool pprof: %v\n%s", err, out)
		}
		m := total.FindSubmatch(out)
		if m == nil {
			t.Fatalf("%s: no total in\n%s", name, out)
		}
		if n, _ := strconv.ParseInt(string(m[1]), 10, 64); n != want[idx] {
			t.Errorf("%s: pprof total %d, JSON %d", name, n, want[idx])
		}
		if !bytes.Contains(out, []byte("_IO_file_doallocate")) {
			t.Errorf("%s: no function names in\n%s", name, out)
		}
	}
}

// symFunc adapts a function to Symbolizer.
type symFunc func(event.Frame) []SymFrame

func (f symFunc) Symbolize(fr event.Frame) []SymFrame { return f(fr) }

func TestFolded(t *testing.T) {
	var buf bytes.Buffer
	if err := exportReport(t).WriteFolded(&buf); err != nil {
		t.Fatal(err)
	}
	want := `(no_stack) 3
0xdead0000;malloc 8
_start;main;_IO_new_fdopen;malloc 472
_start;main;__brk 1073741824
_start;main;fgetc;_IO_new_file_underflow;_IO_doallocbuf;inlined_helper;_IO_file_doallocate;malloc 4096
_start;main;fputs;_IO_doallocbuf;inlined_helper;_IO_file_doallocate;malloc 4096
_start;main;malloc 100
_start;main;malloc 100
_start;main;malloc 16
_start;main;mmap64 1048576
main;echo-client+0x4242;malloc 24
`
	if buf.String() != want {
		t.Errorf("folded:\n%s\nwant:\n%s", buf.String(), want)
	}

	b := NewBuilder(testOpts(Options{}))
	feed(t, b, al(1, 1, event.Malloc, 5, 0x10, stMain))
	odd := symFunc(func(f event.Frame) []SymFrame {
		return []SymFrame{{Function: map[uint64]string{0x100: "operator new(unsigned long)", 0x1000: "a;b\tc"}[f.FileOffset]}}
	})
	buf.Reset()
	if err := b.Finish(odd, Meta{}).WriteFolded(&buf); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "echo-client+0x1200;a_b_c;operator_new(unsigned_long) 5\n" {
		t.Errorf("escaped folded line %q", got)
	}
	buf.Reset()
	if err := NewBuilder(testOpts(Options{})).Finish(nil, Meta{}).WriteFolded(&buf); err != nil || buf.Len() != 0 {
		t.Errorf("empty report: %q, %v", buf.String(), err)
	}
}
