package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"

	"github.com/udstrace/udstrace/internal/browsertest"
	"github.com/udstrace/udstrace/internal/testenv"
)

// leakCacheChurnSrc leaks 1 KiB every millisecond or so, fills a cache of 64 × 4 KiB at the
// start and keeps it, and allocates and frees 32 KiB in between.
const leakCacheChurnSrc = `#include <stdlib.h>
#include <unistd.h>
static void *cache[64];
static void *volatile sink;
__attribute__((noinline)) void fill_cache(void) { for (int i = 0; i < 64; i++) cache[i] = malloc(4096); }
__attribute__((noinline)) void leak_one(void) { sink = malloc(1024); }
__attribute__((noinline)) void churn(void) { char *volatile p = malloc(32768); p[0] = 1; free(p); }
int main(void) {
	fill_cache();
	for (int i = 0; i < 300; i++) { leak_one(); churn(); usleep(1000); }
	return cache[0] == 0;
}
`

// htmlReport is what the test reads of the JSON report: its own oracle for the page's figures.
type htmlReport struct {
	Sites []struct {
		ID               int    `json:"id"`
		Count            uint64 `json:"count"`
		Bytes            uint64 `json:"bytes"`
		OutstandingBytes uint64 `json:"outstanding_bytes"`
		FileBacked       bool   `json:"file_backed"`
		Stack            []struct {
			Function string `json:"function"`
		} `json:"stack"`
	} `json:"sites"`
	Peak []struct {
		PID   uint32 `json:"pid"`
		Bytes uint64 `json:"bytes"`
		Sites []struct {
			Site  int    `json:"site"`
			Count uint64 `json:"count"`
			Bytes uint64 `json:"bytes"`
		} `json:"sites"`
	} `json:"peak"`
}

// siteVia is the id of the (non-file) site whose stack passes through fn, -1 if none.
func (r htmlReport) siteVia(fn string) int {
	for _, s := range r.Sites {
		if !s.FileBacked && slices.ContainsFunc(s.Stack, func(f struct {
			Function string `json:"function"`
		}) bool {
			return f.Function == fn
		}) {
			return s.ID
		}
	}
	return -1
}

// buildDir is the repository's .build, where the screenshots go (a CI artefact).
func buildDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../.build")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestHTMLInBrowser: the page of a traced program with a leak, a cache and churn, made by
// udstrace view from its JSON report, opened in headless Chromium: no console error, no request
// of any kind; the flame graph's total is the JSON's for each weight; a clicked frame spans the
// full width; the search finds leak_one with its share of the bytes; the chart's peak is the
// JSON peak; the leak view ranks leak_one's site first and lists the cache as flat. --format
// html writes the same page. Screenshots of each view go to .build/.
func TestHTMLInBrowser(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	prog := testenv.CompileC(t, "leakcache", leakCacheChurnSrc, "-fno-omit-frame-pointer")
	dir := t.TempDir()
	js, page := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	if _, stderr, code := runCLI(t, bin, "run", "-f", "json", "-o", js, "--", prog); code != exitOK {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	if _, stderr, code := runCLI(t, bin, "view", js, "-o", page); code != exitOK {
		t.Fatalf("view: exit %d: %s", code, stderr)
	}
	raw, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep htmlReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	var leakBytes, withFiles uint64
	leak, cache := rep.siteVia("leak_one"), rep.siteVia("fill_cache")
	for _, s := range rep.Sites {
		withFiles += s.Bytes
		if s.FileBacked {
			continue // off by default, as in the text report
		}
		want["bytes"] += s.Bytes
		want["count"] += s.Count
		want["held"] += s.OutstandingBytes
		if s.ID == leak {
			leakBytes += s.Bytes
		}
	}
	for _, pk := range rep.Peak {
		want["peak"] += pk.Bytes
	}
	if leak < 0 || cache < 0 || len(rep.Peak) != 1 || want["peak"] == 0 {
		t.Fatalf("report: leak site %d, cache site %d, %d peaks: want both sites and one peak", leak, cache, len(rep.Peak))
	}
	// The program's own arithmetic: its peak is during the last churn, after the 300th leak.
	held := map[int][2]uint64{}
	for _, ps := range rep.Peak[0].Sites {
		held[ps.Site] = [2]uint64{ps.Count, ps.Bytes}
	}
	churn := rep.siteVia("churn")
	if held[leak] != [2]uint64{300, 300 * 1024} || held[cache] != [2]uint64{64, 64 * 4096} || held[churn] != [2]uint64{1, 32768} {
		t.Errorf("held at the peak: leak %v, cache %v, churn %v; want 300 blocks of 1 KiB, 64 of 4 KiB, 1 of 32 KiB", held[leak], held[cache], held[churn])
	}
	shots := buildDir(t)

	p, load := browsertest.Open(t, page, 1400, 900)
	t.Logf("page of %d sites, %d bytes: loaded and drawn in %v", len(rep.Sites), len(raw), load)
	p.Click(t, "#tab-flame")
	for _, w := range []string{"bytes", "count", "held", "peak"} {
		got := browsertest.Eval[string](t, p, fmt.Sprintf(`(() => { const s = document.querySelector('#weight'); s.value = %q;
			s.dispatchEvent(new Event('change')); return document.querySelector('#flame-total').dataset.total; })()`, w))
		if got != strconv.FormatUint(want[w], 10) {
			t.Errorf("weight %s: flame graph total %s, JSON %d", w, got, want[w])
		}
	}
	browsertest.Eval[bool](t, p, `(() => { const s = document.querySelector('#weight'); s.value = 'bytes'; s.dispatchEvent(new Event('change')); return true; })()`)
	// The kind filter: file mappings (ld.so maps the libraries) join the bytes when asked.
	p.Click(t, "#k-file")
	if got := browsertest.Eval[string](t, p, `document.querySelector('#flame-total').dataset.total`); got != strconv.FormatUint(withFiles, 10) || withFiles == want["bytes"] {
		t.Errorf("with file mappings: flame graph total %s, JSON %d (%d without)", got, withFiles, want["bytes"])
	}
	p.Click(t, "#k-file")

	// Search: typed key by key, the share of leak_one is its site's share of the bytes.
	p.Type(t, "#search", "leak_one")
	share := browsertest.Eval[string](t, p, `document.querySelector('#search-result').dataset.percent`)
	got, _ := strconv.ParseFloat(share, 64)
	if wantShare := 100 * float64(leakBytes) / float64(want["bytes"]); math.Abs(got-wantShare) > 0.001 {
		t.Errorf("search leak_one: %s%%, want %.4f%%", share, wantShare)
	}
	if n := browsertest.Eval[int](t, p, `document.querySelectorAll('#flame g.match').length`); n == 0 {
		t.Errorf("search leak_one: no frame highlighted")
	}
	p.Screenshot(t, filepath.Join(shots, "html-search.png"))
	browsertest.Eval[bool](t, p, `(() => { const s = document.querySelector('#search'); s.value = ''; s.dispatchEvent(new Event('input')); return true; })()`)

	// Tooltip: the mouse over leak_one's frame tells its module, source line and figures.
	box := browsertest.Eval[[]float64](t, p, `(() => { const r = document.querySelector('#flame g[data-name="leak_one"] rect').getBoundingClientRect();
		return [r.x + r.width / 2, r.y + r.height / 2]; })()`)
	p.Do(t, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, box[0], box[1]))
	tip := browsertest.Eval[string](t, p, `document.querySelector('#tip').hidden ? '' : document.querySelector('#tip').textContent`)
	for _, want := range []string{"leak_one\n", "module: " + prog + "\n", "source: leakcache.c:", fmt.Sprintf("bytes allocated: %s", bytesShown(leakBytes))} {
		if !strings.Contains(tip, want) {
			t.Errorf("tooltip over leak_one %q lacks %q", tip, want)
		}
	}

	// Zoom: a real click on leak_one's frame makes it span the graph.
	before := browsertest.Eval[[]float64](t, p, `(() => { const g = document.querySelector('#flame g[data-name="leak_one"]');
		return [+g.dataset.id, +g.querySelector('rect').getAttribute('width'), document.querySelector('#flame').clientWidth]; })()`)
	if before[1] >= before[2] {
		t.Fatalf("leak_one's frame is %v wide of %v before the click: nothing to zoom", before[1], before[2])
	}
	p.Click(t, `#flame g[data-name="leak_one"] rect`)
	after := browsertest.Eval[float64](t, p, fmt.Sprintf(`+document.querySelector('#flame g[data-id="%d"] rect').getAttribute('width')`, int(before[0])))
	if math.Abs(after-before[2]) > 0.5 {
		t.Errorf("clicked leak_one (%v px of %v): now %v px wide, want the full width", before[1], before[2], after)
	}
	p.Screenshot(t, filepath.Join(shots, "html-zoom.png"))
	p.Click(t, "#reset")
	p.Screenshot(t, filepath.Join(shots, "html-flame.png"))

	// Memory over time: the chart's highest point is the JSON peak.
	p.Click(t, "#tab-time")
	if got := browsertest.Eval[string](t, p, `document.querySelector('#tl-peak').dataset.bytes`); got != strconv.FormatUint(rep.Peak[0].Bytes, 10) {
		t.Errorf("chart peak %s, JSON peak %d", got, rep.Peak[0].Bytes)
	}
	if got := browsertest.Eval[string](t, p, `document.querySelector('#tl-sites tr[data-site]').dataset.site`); got != strconv.Itoa(rep.Peak[0].Sites[0].Site) {
		t.Errorf("sites at the peak start with #%s, JSON peak with #%d", got, rep.Peak[0].Sites[0].Site)
	}
	p.Screenshot(t, filepath.Join(shots, "html-time.png"))
	// A click halfway lists the sites held then: the cache (256 KiB) before the leak (about 150 KiB by then).
	p.Do(t, chromedp.MouseClickXY(700, 330))
	if at := browsertest.Eval[string](t, p, `document.querySelector('#tl-at').textContent`); !strings.HasPrefix(at, "At ") {
		t.Errorf("after a click halfway the chart lists %q, want the sites at that moment", at)
	}
	if got := browsertest.Eval[[]string](t, p, `[...document.querySelectorAll('#tl-sites tr[data-site]')].slice(0, 2).map((r) => r.dataset.site)`); !slices.Equal(got, []string{strconv.Itoa(cache), strconv.Itoa(leak)}) {
		t.Errorf("sites held halfway %v, want the cache #%d, then the leak #%d", got, cache, leak)
	}

	// Leaks: leak_one first among the growing, the cache among the flat.
	p.Click(t, "#tab-leaks")
	if got := browsertest.Eval[string](t, p, `(document.querySelector('#leaks-growing tr[data-site]') || {dataset: {}}).dataset.site || ''`); got != strconv.Itoa(leak) {
		t.Errorf("leak view ranks site %q first, want leak_one's #%d", got, leak)
	}
	flat := browsertest.Eval[[]string](t, p, `[...document.querySelectorAll('#leaks-flat tr[data-site]')].map((r) => r.dataset.site)`)
	if !slices.Contains(flat, strconv.Itoa(cache)) {
		t.Errorf("old but flat sites %v lack the cache's #%d", flat, cache)
	}
	p.Screenshot(t, filepath.Join(shots, "html-leaks.png"))

	errs, reqs := p.Problems()
	if len(errs) > 0 || len(reqs) > 0 {
		t.Errorf("console errors %q, requests %q: want none", errs, reqs)
	}

	// --format html: the same page straight from a trace, here in count mode (no blocks: no
	// timeline), every view drawn without an error.
	direct := filepath.Join(dir, "direct.html")
	if _, stderr, code := runCLI(t, bin, "run", "--mode", "count", "-f", "html", "-o", direct, "--", prog); code != exitOK {
		t.Fatalf("run --mode count -f html: exit %d: %s", code, stderr)
	}
	q, _ := browsertest.Open(t, direct, 1400, 900)
	if title := browsertest.Eval[string](t, q, `document.title`); !strings.HasSuffix(title, prog) {
		t.Errorf("--format html page titled %q", title)
	}
	for _, tab := range []string{"#tab-time", "#tab-leaks", "#tab-flame"} {
		q.Click(t, tab)
	}
	if got := browsertest.Eval[string](t, q, `document.querySelector('#flame-total').dataset.total`); got == "" || got == "0" {
		t.Errorf("count mode: flame graph total %q", got)
	}
	if errs, reqs := q.Problems(); len(errs) > 0 || len(reqs) > 0 {
		t.Errorf("--format html: console errors %q, requests %q: want none", errs, reqs)
	}
}

// TestHTMLEchoVerdict: the echo experiment's page opens on the socket-path verdict, and the
// flame graph outlines the stdio client's allocations (fdopen and the stdio buffer), only those.
func TestHTMLEchoVerdict(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	dir := t.TempDir()
	js, page := filepath.Join(dir, "echo.json"), filepath.Join(dir, "echo.html")
	if _, stderr, code := runCLI(t, bin, "run", "--workload", "echo", "-f", "json", "-o", js); code != exitOK {
		t.Fatalf("run --workload echo: exit %d: %s", code, stderr)
	}
	if _, stderr, code := runCLI(t, bin, "view", js, "-o", page); code != exitOK {
		t.Fatalf("view: exit %d: %s", code, stderr)
	}
	raw, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Sites []struct {
			PID        uint32 `json:"pid"`
			Bytes      uint64 `json:"bytes"`
			FileBacked bool   `json:"file_backed"`
		} `json:"sites"`
		SocketPath struct {
			Processes []struct {
				PID  uint32 `json:"pid"`
				Role string `json:"role"`
			} `json:"processes"`
		} `json:"socket_path"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	var stdio uint32
	for _, sp := range rep.SocketPath.Processes {
		if sp.Role == "client-stdio" {
			stdio = sp.PID
		}
	}
	var stdioBytes uint64
	for _, s := range rep.Sites {
		if s.PID == stdio && !s.FileBacked {
			stdioBytes += s.Bytes
		}
	}
	p, _ := browsertest.Open(t, page, 1400, 900)
	open := browsertest.Eval[[]bool](t, p, `[!document.querySelector('#view-verdict').hidden, document.querySelector('#view-flame').hidden,
		document.querySelector('#verdict-line').textContent.startsWith('Conclusion: the AF_UNIX socket path allocated nothing')]`)
	if !slices.Equal(open, []bool{true, true, true}) {
		t.Errorf("verdict shown, flame graph hidden, verdict holds: %v, want all true", open)
	}
	p.Screenshot(t, filepath.Join(buildDir(t), "html-echo.png"))
	p.Click(t, "#to-flame")
	// The link filters the flame graph to the stdio client.
	if got := browsertest.Eval[string](t, p, `document.querySelector('#flame-total').dataset.total`); stdio == 0 || got != strconv.FormatUint(stdioBytes, 10) {
		t.Errorf("the stdio client's (pid %d) flame graph totals %s, JSON %d", stdio, got, stdioBytes)
	}
	// The outlined frames: every one lies on the stdio client's stacks, and its leaf frames are
	// the allocations behind the verdict's sources.
	hl := browsertest.Eval[[]string](t, p, `[...document.querySelectorAll('#flame g.hl')].map((g) => g.dataset.name)`)
	if !slices.Contains(hl, "_IO_new_fdopen") && !slices.Contains(hl, "fdopen") || !slices.Contains(hl, "_IO_file_doallocate") {
		t.Errorf("outlined frames %q: want fdopen's and _IO_file_doallocate's", hl)
	}
	for _, name := range hl {
		if strings.Contains(name, "echo-server") || strings.Contains(name, "read_line_raw") {
			t.Errorf("outlined frame %q is not the stdio client's", name)
		}
	}
	p.Screenshot(t, filepath.Join(buildDir(t), "html-echo-flame.png"))
	if errs, reqs := p.Problems(); len(errs) > 0 || len(reqs) > 0 {
		t.Errorf("console errors %q, requests %q: want none", errs, reqs)
	}
}

// TestViewBadInput: view refuses what is not a saved JSON report in one line: a missing file
// or a document of another schema is udstrace's failure (125), no file or two a usage error (2);
// nothing is written.
func TestViewBadInput(t *testing.T) {
	bin := buildCLI(t)
	dir := t.TempDir()
	other := filepath.Join(dir, "other.json")
	if err := os.WriteFile(other, []byte(`{"schema": "udstrace.interval/v1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.html")
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"view", filepath.Join(dir, "missing.json"), "-o", out}, exitFailure, "reading report: open "},
		{[]string{"view", other, "-o", out}, exitFailure, `schema "udstrace.interval/v1", not "udstrace.report/v1"`},
		{[]string{"view", "-o", out}, exitUsage, "accepts 1 arg(s)"},
		{[]string{"view", other, other, "-o", out}, exitUsage, "accepts 1 arg(s)"},
	} {
		_, stderr, code := runCLI(t, bin, c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("udstrace %q: exit %d, %q; want exit %d and one line with %q", c.args, code, stderr, c.code, c.msg)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed view left %s: %v", out, err)
	}
}

// bytesShown is how the page writes a byte figure of 1 KiB or more: "300.0 KiB (307,200 B)".
func bytesShown(n uint64) string {
	v, u := float64(n), 0
	units := []string{"B", "KiB", "MiB", "GiB"}
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	digits := 1
	if v < 10 {
		digits = 2
	}
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return strconv.FormatFloat(v, 'f', digits, 64) + " " + units[u] + " (" + s + " B)"
}
