package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/udstrace/udstrace/pkg/event"
)

// tailSym names the tests' frames and puts back two frames between calleeEntry (frame 0, at
// its function's first instruction) and main, as if main called a function that jumped to
// another that jumped to calleeEntry. The inner one's jump is in a function inlined there;
// the outer one's jump ends the function just before calleeEntry's, so it has calleeEntry's
// file offset, as a return address: another frame, with its own pprof location.
type tailSym struct {
	fakeSym
	pairs int
}

var (
	fEntry     = event.Frame{Module: exePath, FileOffset: 0x2100, ModuleKey: "8:1:" + exePath}
	fTailInner = event.Frame{Module: exePath, FileOffset: 0x2000, ModuleKey: "8:1:" + exePath, Return: true}
	fTailOuter = event.Frame{Module: exePath, FileOffset: 0x2100, ModuleKey: "8:1:" + exePath, Return: true}
	stTail     = stk(fEntry, fMain, fStart)
)

func (s *tailSym) Symbolize(f event.Frame) []SymFrame {
	if f.Module == exePath {
		switch {
		case f.FileOffset == 0x2000:
			return []SymFrame{{Function: "jumper_inl", File: "t.h", Line: 7, Inlined: true}, {Function: "jumper", Offset: 0x2a, File: "t.c", Line: 9}}
		case f.FileOffset == 0x2100 && f.Return: // looked up one byte back: the jump
			return []SymFrame{{Function: "outer_jumper", Offset: 0x5, File: "t.c", Line: 3}}
		case f.FileOffset == 0x2100:
			return []SymFrame{{Function: "callee_entry", File: "t.c", Line: 5}}
		}
	}
	return s.fakeSym.Symbolize(f)
}

func (s *tailSym) TailCalls(callee, caller event.Frame) []event.Frame {
	s.pairs++
	if callee != fEntry || caller.FileOffset != fMain.FileOffset {
		return nil
	}
	return []event.Frame{fTailInner, fTailOuter}
}

func TestTailCallFrames(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, al(1, 1, event.Malloc, 5, 0x10, stTail), al(2, 1, event.Calloc, 7, 0x20, stTail))
	sym := &tailSym{}
	r := b.Finish(sym, Meta{})
	if len(r.Sites) != 2 {
		t.Fatalf("%d sites, want 2", len(r.Sites))
	}
	type entry struct {
		fn         string
		frame      int
		tail, inl  bool
		symbol     string
		fileOffset Hex
	}
	want := []entry{
		{"callee_entry", 0, false, false, "echo-client!callee_entry+0x0", 0x2100},
		{"jumper_inl", 1, true, false, "echo-client!jumper_inl", 0x2000},
		{"outer_jumper", 1, true, false, "echo-client!outer_jumper+0x5", 0x2100},
		{"main", 1, false, false, "echo-client!main+0x10", 0x1000},
		{"_start", 2, false, false, "echo-client!_start+0x10", 0x1200},
	}
	for _, s := range r.Sites {
		var got []entry
		for _, f := range s.Stack {
			got = append(got, entry{f.Function, f.Frame, f.TailCall, f.Inlined, f.Symbol, f.FileOffset})
		}
		if len(got) != len(want) {
			t.Fatalf("site %s: stack %+v, want %+v", s.Kind, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("site %s entry %d: %+v, want %+v", s.Kind, i, got[i], want[i])
			}
		}
	}
	// One call per distinct pair of adjacent frames, whatever the number of sites.
	if sym.pairs != 2 {
		t.Errorf("TailCalls called %d times for 2 distinct pairs", sym.pairs)
	}

	var js, text, folded, pb bytes.Buffer
	for _, w := range []struct {
		name string
		f    func() error
	}{{"json", func() error { return r.WriteJSON(&js) }}, {"text", func() error { return r.WriteText(&text) }},
		{"folded", func() error { return r.WriteFolded(&folded, FoldedOptions{}) }}, {"pprof", func() error { return r.WritePprof(&pb) }}} {
		if err := w.f(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
	}
	var doc struct {
		Sites []struct {
			Stack []map[string]any `json:"stack"`
		} `json:"sites"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, s := range doc.Sites {
		var flags []any
		for _, f := range s.Stack {
			flags = append(flags, f["tail_call"])
		}
		if fmt.Sprint(flags) != "[false true true false false]" {
			t.Errorf("JSON tail_call flags %v", flags)
		}
	}
	if !strings.Contains(text.String(), "echo-client!outer_jumper+0x5 [tail call] (t.c:3)") ||
		!strings.Contains(text.String(), "echo-client!jumper_inl [tail call] (t.h:7)") {
		t.Errorf("text lacks the [tail call] frames:\n%s", text.String())
	}
	if !strings.Contains(folded.String(), "_start;main;outer_jumper;jumper_inl;callee_entry 5\n") {
		t.Errorf("folded:\n%s", folded.String())
	}
	p, err := profile.Parse(&pb)
	if err != nil {
		t.Fatal(err)
	}
	for _, smp := range p.Sample {
		var names []string
		for _, l := range smp.Location {
			for _, ln := range l.Line {
				names = append(names, ln.Function.Name)
			}
			names = append(names, "|")
		}
		if got := strings.Join(names, " "); got != "callee_entry | jumper_inl | outer_jumper | main | _start |" {
			t.Errorf("pprof sample locations: %s", got)
		}
	}
}
