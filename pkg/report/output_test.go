package report

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/pkg/event"
)

func echoReport(t *testing.T, meta Meta, extra ...any) *Report {
	t.Helper()
	allocs, socks := echoRun(extra...)
	evs := append(allocs, socks...)
	evs = append(evs, exit(900, 10, 0), exit(901, 11, 0), exit(902, 12, 1<<8))
	return build(t, meta, evs...)
}

func echoMeta() Meta {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return Meta{Command: []string{"workload", "echo"}, Mode: "full", StackMode: "fp", Start: start,
		End: start.Add(1500 * time.Millisecond), Roles: echoRoles}
}

// path walks a decoded JSON document: keys for objects, ints for arrays.
func jsonAt(t *testing.T, v any, keys ...any) any {
	t.Helper()
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%v: not an object at %q", keys, k)
			}
			if v, ok = m[k]; !ok {
				t.Fatalf("%v: missing %q", keys, k)
			}
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				t.Fatalf("%v: no element %d", keys, k)
			}
			v = a[k]
		}
	}
	return v
}

func TestJSON(t *testing.T) {
	r := echoReport(t, echoMeta())
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "\n  \"schema\": \"udstrace.report/v1\",\n") {
		t.Errorf("not indented or no schema:\n%.200s", buf.String())
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		keys []any
		want any
	}{
		{[]any{"lost_events"}, 0.0},
		{[]any{"lost_detail", "ring_buffer"}, 0.0},
		{[]any{"duration_seconds"}, 1.5},
		{[]any{"command", 1}, "echo"},
		{[]any{"stack_mode"}, "fp"},
		{[]any{"processes", 0, "pid"}, 10.0},
		{[]any{"processes", 0, "comm"}, "comm"},
		{[]any{"processes", 0, "role"}, "server"},
		{[]any{"processes", 0, "exit_code"}, 0.0},
		{[]any{"processes", 2, "exit_code"}, 1.0},
		{[]any{"processes", 2, "socket_syscalls_by_name", "read"}, 9.0},
		{[]any{"sites", 0, "pid"}, 12.0},
		{[]any{"sites", 0, "kind"}, "malloc"},
		{[]any{"sites", 0, "count"}, 1.0},
		{[]any{"sites", 0, "bytes"}, 4096.0},
		{[]any{"sites", 0, "outstanding_bytes"}, 4096.0},
		{[]any{"sites", 0, "stack", 0, "symbol"}, "libc.so.6!malloc+0x10"},
		{[]any{"sites", 0, "stack", 0, "module"}, libcPath},
		{[]any{"sites", 0, "stack", 0, "addr"}, "0x7f0000000100"},
		{[]any{"sites", 0, "stack", 0, "file_offset"}, "0x100"},
		{[]any{"sites", 0, "stack", 2, "inlined"}, true},
		{[]any{"socket_path", "syscalls"}, 42.0},
		{[]any{"socket_path", "user_allocations"}, 0.0},
		{[]any{"socket_path", "user_bytes"}, 0.0},
		{[]any{"socket_path", "holds"}, true},
		{[]any{"socket_path", "reason"}, ""},
		{[]any{"socket_path", "processes", 2, "allocations_after_first_socket_call"}, 3.0},
		{[]any{"socket_path", "processes", 2, "sources", 0, "function"}, "_IO_file_doallocate"},
		{[]any{"socket_path", "processes", 2, "sources", 0, "caller"}, "main"},
	}
	for _, c := range checks {
		if got := jsonAt(t, doc, c.keys...); got != c.want {
			t.Errorf("%v = %#v, want %#v", c.keys, got, c.want)
		}
	}
	for _, k := range []string{"warnings", "mode", "start", "end", "processes", "sites", "socket_path"} {
		jsonAt(t, doc, k)
	}
	if jsonAt(t, doc, "processes", 0, "first_socket_time") != 100.0 {
		t.Errorf("first_socket_time = %v", jsonAt(t, doc, "processes", 0, "first_socket_time"))
	}

	// The document decodes back into a Report equal to the original.
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	var buf2 bytes.Buffer
	if err := back.WriteJSON(&buf2); err != nil {
		t.Fatal(err)
	}
	if buf.String() != buf2.String() {
		t.Errorf("JSON round trip changed the document")
	}
}

func TestJSONLostAndExitNull(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b, al(1, 1, event.Malloc, 1, 0x10, stMain))
	r := b.Finish(nil, Meta{Lost: LostEvents{RingBuffer: 3, StackTruncated: 4, Other: 2}})
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["lost_events"] != 5.0 || jsonAt(t, doc, "lost_detail", "stack_truncated") != 4.0 {
		t.Errorf("lost = %v %v", doc["lost_events"], doc["lost_detail"])
	}
	if v := jsonAt(t, doc, "processes", 0, "exit_code"); v != nil {
		t.Errorf("exit_code of a live process = %v", v)
	}
	if v := jsonAt(t, doc, "command"); v == nil {
		t.Errorf("command is null")
	}
}

func TestText(t *testing.T) {
	r := echoReport(t, echoMeta())
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"command:     workload echo\n", "lost events: 0\n", "stack mode:  fp\n",
		"\nPROCESSES\n", "\nTOP CALL SITES (6 of 6 allocation sites, by bytes)\n", "\nSOCKET PATH\n",
		"    libc.so.6!malloc+0x10 (x.c:256)\n", "inlined_helper [inlined] (y.h:3)",
		"_IO_file_doallocate called from fgetc in main", "verdict: holds\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q", want)
		}
	}
	// Top sites lead with their rank, then the stable id JSON uses, in the report's order.
	ranks := regexp.MustCompile(`(?m)^(\d+)\. site #(\d+)  `).FindAllStringSubmatch(out, -1)
	if len(ranks) != len(r.Sites) {
		t.Errorf("%d ranked sites in the text, want %d", len(ranks), len(r.Sites))
	}
	for i, m := range ranks {
		if m[1] != strconv.Itoa(i+1) || m[2] != strconv.Itoa(r.Sites[i].ID) {
			t.Errorf("site line %d reads %q, want rank %d and site #%d", i, m[0], i+1, r.Sites[i].ID)
		}
	}
	// Columns are aligned: every header word starts where its column's cells start.
	lines := strings.Split(out, "\n")
	var hdr, row string
	for i, l := range lines {
		if strings.HasPrefix(l, "PID  ") && strings.Contains(l, "OUTSTANDING") {
			hdr, row = l, lines[i+1]
		}
	}
	if m := regexp.MustCompile(`^PID\s+COMM\s+ROLE\s+EXIT\s+ALLOCS\s+BYTES\s+FREES\s+OUTSTANDING\s+MMAP\s+BRK\s+FILES MAPPED\s+SOCKCALLS\s+ALLOCATOR$`); !m.MatchString(hdr) {
		t.Errorf("header %q", hdr)
	}
	if i := strings.Index(hdr, "ROLE"); !strings.HasPrefix(row[i:], "server") {
		t.Errorf("ROLE column not aligned:\n%s\n%s", hdr, row)
	}
	if last := lines[len(lines)-2]; last != r.SocketPath.Conclusion || lines[len(lines)-1] != "" {
		t.Errorf("last line %q, want the conclusion", last)
	}
	if !strings.HasPrefix(r.SocketPath.Conclusion, "Conclusion: the AF_UNIX socket path allocated nothing") {
		t.Errorf("conclusion %q", r.SocketPath.Conclusion)
	}
}

func TestTextNotHolds(t *testing.T) {
	r := echoReport(t, echoMeta(), al(150, 11, event.Malloc, 64, 0x20, stHelper))
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := strings.TrimSuffix(buf.String(), "\n")
	last := out[strings.LastIndexByte(out, '\n')+1:]
	want := "Conclusion: NOT shown that the AF_UNIX socket path allocates nothing in user space: the raw client (pid 11) made 1 allocation (64 B) after its first socket call, from helper."
	if last != want {
		t.Errorf("last line:\n got %s\nwant %s", last, want)
	}
}

func TestTextEscapes(t *testing.T) {
	b := NewBuilder(testOpts(Options{TopSites: 1}))
	odd := fr("/tmp/evil\x1b[31m\xff.so", 0x10)
	a := al(1, 1, event.Malloc, 1, 0x10, stk(fMalloc, odd))
	last := al(2, 1, event.Malloc, 1, 0x20, stMain)
	last.Comm = "bad\ncomm\t\x07" // the latest comm is the one shown
	feed(t, b, a, last)
	r := b.Finish(&fakeSym{}, Meta{Command: []string{"prog", "arg\rx"}, Warnings: []string{"warn\x00ing"}})
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, c := range []string{"\x1b", "\xff", "\x07", "\r", "\x00", "bad\ncomm"} {
		if strings.Contains(out, c) {
			t.Errorf("text contains raw %q", c)
		}
	}
	for _, want := range []string{`bad\ncomm\t\a`, `evil\x1b[31m\xff.so+0x10`, `arg\rx`, `warn\x00ing`, "TOP CALL SITES (1 of 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
}

// TestCountModeNotTraced: count mode traces no frees and no memory syscalls; its JSON leaves
// those figures out (absent, not 0) and its text shows "-", while full mode keeps them.
func TestCountModeNotTraced(t *testing.T) {
	untraced := []string{"frees", "free_null_calls", "unmatched_frees", "outstanding_count", "outstanding_bytes", "mmap_calls", "mmap_bytes",
		"mremap_calls", "mremap_bytes", "munmap_calls", "brk_calls", "brk_bytes", "inside_allocator"}
	siteUntraced := []string{"outstanding_count", "outstanding_bytes", "oldest_outstanding_age_seconds", "outstanding_older_than_min_age"}
	for _, mode := range []string{"full", "count"} {
		b := NewBuilder(testOpts(Options{}))
		feed(t, b, al(1, 1, event.Malloc, 100, 0x10, stMain), al(2, 1, event.Malloc, 10, 0x20, stHelper))
		r := b.Finish(&fakeSym{}, Meta{Mode: mode})
		var buf bytes.Buffer
		if err := r.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Processes []map[string]json.RawMessage `json:"processes"`
			Sites     []map[string]json.RawMessage `json:"sites"`
		}
		if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		for _, k := range untraced {
			if _, ok := doc.Processes[0][k]; ok != (mode == "full") {
				t.Errorf("%s mode: processes[0].%s present %v", mode, k, ok)
			}
		}
		for _, s := range doc.Sites {
			for _, k := range siteUntraced {
				if _, ok := s[k]; ok != (mode == "full") {
					t.Errorf("%s mode: sites[].%s present %v", mode, k, ok)
				}
			}
			if _, ok := s["count"]; !ok {
				t.Errorf("%s mode: sites[].count missing", mode)
			}
		}
		buf.Reset()
		if err := r.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
		text := buf.String()
		if strings.Contains(text, "outstanding") == (mode == "count") {
			t.Errorf("%s mode: text says outstanding %v:\n%s", mode, strings.Contains(text, "outstanding"), text)
		}
		if row := regexp.MustCompile(`(?m)^1 +comm +.*$`).FindString(text); mode == "count" && !strings.Contains(row, " -  ") {
			t.Errorf("count mode: process row %q shows no '-'", row)
		}
	}
}
