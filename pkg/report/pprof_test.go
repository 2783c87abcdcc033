package report

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
	threads := 0
	for _, site := range r.Sites {
		s := bySite[int64(site.ID)]
		if s == nil || s.NumLabel["pid"][0] != int64(site.PID) || s.Label["comm"][0] != site.Comm || s.Label["kind"][0] != site.Kind {
			t.Fatalf("site %d: sample %+v", site.ID, s)
		}
		if site.Thread != "" {
			threads++
			if th := s.Label["thread"]; len(th) != 1 || th[0] != site.Thread || s.NumLabel["tid"][0] != int64(site.TID) {
				t.Errorf("site %d of thread %d %q: labels %v %v", site.ID, site.TID, site.Thread, s.Label, s.NumLabel)
			}
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
			if l := s.Location[1]; l.Mapping == nil || l.Mapping.File != "[unknown]" || !equal(names(l), []string{"0xdead0000"}) {
				t.Errorf("anonymous frame %v %+v", names(l), l.Mapping)
			}
		}
		if len(site.Stack) > 0 && leaf[0] != site.Stack[0].Function {
			t.Errorf("site %d: leaf %v, want %s", site.ID, leaf, site.Stack[0].Function)
		}
	}
	if threads == 0 {
		t.Error("no site names its thread: the thread labels are untested")
	}
	if p.Mapping[0].File != exePath {
		t.Errorf("first mapping %s, want the executable", p.Mapping[0].File)
	}
	for _, l := range p.Location {
		if l.Mapping == nil {
			t.Errorf("location %d (%v) has no mapping", l.ID, names(l))
		}
	}
	if p.PeriodType == nil || p.PeriodType.Type != "space" || p.PeriodType.Unit != "bytes" || p.Period != 1 {
		t.Errorf("period %+v %d, want space/bytes 1 (not sampled)", p.PeriodType, p.Period)
	}
	if p.DefaultSampleType != "inuse_space" {
		t.Errorf("default sample type %q, want inuse_space in full mode", p.DefaultSampleType)
	}
}

// TestPprofCountMode: count mode traces no frees, so its profile has no inuse values, and its
// default sample type is what was allocated; a sampled trace says its period.
func TestPprofCountMode(t *testing.T) {
	r := exportReport(t)
	r.Mode, r.SampleBytes = "count", 4096
	var buf bytes.Buffer
	if err := r.WritePprof(&buf); err != nil {
		t.Fatal(err)
	}
	p, err := profile.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, st := range p.SampleType {
		types = append(types, st.Type)
	}
	if !equal(types, []string{"alloc_objects", "alloc_space"}) || p.DefaultSampleType != "alloc_space" {
		t.Errorf("sample types %v, default %q", types, p.DefaultSampleType)
	}
	if p.Period != 4096 || p.PeriodType.Type != "space" {
		t.Errorf("period %d %+v, want 4096 space", p.Period, p.PeriodType)
	}
	var sum int64
	for _, s := range p.Sample {
		if len(s.Value) != 2 {
			t.Fatalf("sample values %v", s.Value)
		}
		sum += s.Value[1]
	}
	if want := siteTotals(r)[1]; sum != want || sum == 0 {
		t.Errorf("alloc_space total %d, JSON %d", sum, want)
	}
}

// TestPprofTool checks that the go tool reads the profile and prints the JSON's totals, for each
// sample type and for the default one, in full and in count mode (whose default must not be empty).
func TestPprofTool(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go tool pprof")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	total := regexp.MustCompile(`Showing nodes accounting for \S+, \S+ of (\d+)B total`)
	for _, tc := range []struct {
		mode, index string
		col         int // siteTotals column
	}{
		{"full", "alloc_space", 1}, {"full", "inuse_space", 3}, {"full", "", 3},
		{"count", "alloc_space", 1}, {"count", "", 1},
	} {
		r := exportReport(t)
		r.Mode = tc.mode
		file := filepath.Join(t.TempDir(), "heap.pb.gz")
		var buf bytes.Buffer
		if err := r.WritePprof(&buf); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		// -unit=B keeps the totals exact; no symbolization: the profile carries its names.
		args := []string{"tool", "pprof", "-top", "-unit=B", "-nodefraction=0", "-symbolize=none"}
		if tc.index != "" {
			args = append(args, "-sample_index="+tc.index)
		}
		out, err := exec.Command(goBin, append(args, file)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool pprof: %v\n%s", err, out)
		}
		m := total.FindSubmatch(out)
		if m == nil {
			t.Fatalf("%s %q: no total in\n%s", tc.mode, tc.index, out)
		}
		if n, _ := strconv.ParseInt(string(m[1]), 10, 64); n != siteTotals(r)[tc.col] || n == 0 {
			t.Errorf("%s %q: pprof total %d, JSON %d", tc.mode, tc.index, n, siteTotals(r)[tc.col])
		}
		if !bytes.Contains(out, []byte("_IO_file_doallocate")) {
			t.Errorf("%s %q: no function names in\n%s", tc.mode, tc.index, out)
		}
	}
}

// symFunc adapts a function to Symbolizer.
type symFunc func(event.Frame) []SymFrame

func (f symFunc) Symbolize(fr event.Frame) []SymFrame { return f(fr) }

func TestFolded(t *testing.T) {
	var buf bytes.Buffer
	if err := exportReport(t).WriteFolded(&buf, FoldedOptions{}); err != nil {
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
	if err := b.Finish(odd, Meta{}).WriteFolded(&buf, FoldedOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "echo-client+0x1200;a_b_c;operator_new(unsigned_long) 5\n" {
		t.Errorf("escaped folded line %q", got)
	}
	buf.Reset()
	if err := NewBuilder(testOpts(Options{})).Finish(nil, Meta{}).WriteFolded(&buf, FoldedOptions{}); err != nil || buf.Len() != 0 {
		t.Errorf("empty report: %q, %v", buf.String(), err)
	}
}

// TestFoldedWeights: each weight sums to the JSON's total of that figure, sites of weight 0 are
// left out, a process root names each site's process, and count mode refuses outstanding weights.
func TestFoldedWeights(t *testing.T) {
	r := exportReport(t)
	for w, col := range map[Weight]int{WeightCount: 0, WeightBytes: 1, WeightOutstandingCount: 2, WeightOutstandingBytes: 3} {
		var buf bytes.Buffer
		if err := r.WriteFolded(&buf, FoldedOptions{Weight: w, ProcessRoot: true}); err != nil {
			t.Fatal(err)
		}
		var sum int64
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		roots := map[string]bool{}
		for _, l := range lines {
			sp := strings.LastIndexByte(l, ' ')
			n, err := strconv.ParseInt(l[sp+1:], 10, 64)
			if err != nil || n <= 0 {
				t.Fatalf("%s: line %q", w, l)
			}
			sum += n
			roots[l[:strings.IndexByte(l, ';')]] = true
		}
		nonzero := 0
		want := map[string]bool{}
		for i := range r.Sites {
			if r.Sites[i].weight(w) > 0 {
				nonzero++
				want[r.Sites[i].Comm+"-"+strconv.Itoa(int(r.Sites[i].PID))] = true
			}
		}
		if sum != siteTotals(r)[col] || len(lines) != nonzero {
			t.Errorf("%s: %d lines summing to %d, JSON %d over %d sites", w, len(lines), sum, siteTotals(r)[col], nonzero)
		}
		if !maps.Equal(roots, want) {
			t.Errorf("%s: roots %v, want %v", w, roots, want)
		}
	}
	r.Mode = "count"
	if err := r.WriteFolded(io.Discard, FoldedOptions{Weight: WeightOutstandingBytes}); !errors.Is(err, ErrNotTraced) {
		t.Errorf("count mode, outstanding weight: %v", err)
	}
	if err := r.WriteFolded(io.Discard, FoldedOptions{Weight: "width"}); err == nil {
		t.Error("unknown weight accepted")
	}
}
