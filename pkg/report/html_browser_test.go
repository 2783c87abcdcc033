package report

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/udstrace/udstrace/internal/browsertest"
	"github.com/udstrace/udstrace/pkg/event"
)

// numberedSym names a frame of module /usr/lib/libbig.so after its offset, as a program of
// thousands of functions in hundreds of files would be named.
type numberedSym struct{}

func (numberedSym) Symbolize(f event.Frame) []SymFrame {
	n := f.FileOffset / 0x40
	return []SymFrame{{Function: fmt.Sprintf("big::namespace_%d::function_%d", n%97, n), Offset: 0x10,
		File: fmt.Sprintf("/build/src/module_%d/file_%d.cc", n%53, n%600), Line: int(n % 2000)}}
}

// bigReport is a report of 10,000 sites with stacks 12 to 40 frames deep drawn from 3,000
// functions, a third of the blocks freed.
func bigReport(t testing.TB) *Report {
	rng := rand.New(rand.NewPCG(15, 15))
	b := NewBuilder(testOpts(Options{}))
	root := []event.Frame{fr("/usr/lib/libbig.so", 0x40), fr("/usr/lib/libbig.so", 0x80)}
	addr := uint64(0x100000)
	for i := range 10_000 {
		st := []event.Frame{fMalloc}
		for range 10 + rng.IntN(29) {
			st = append(st, fr("/usr/lib/libbig.so", uint64(3+rng.IntN(3000))*0x40))
		}
		st = append(st, root...)
		for range 1 + rng.IntN(3) {
			addr += 0x1000
			tm := uint64(i)*ms + 1
			b.Alloc(al(tm, 42, event.Malloc, uint64(16+rng.IntN(100_000)), addr, st))
			if rng.IntN(3) == 0 {
				b.Alloc(al(tm+1, 42, event.Free, 0, addr, st))
			}
		}
	}
	return b.Finish(numberedSym{}, Meta{Command: []string{"big"}})
}

// TestHTMLTenThousandSites: a report of 10,000 sites makes a page under 5 MB that Chromium
// loads and draws whole (its flame total the report's) with no error; the load time is logged.
func TestHTMLTenThousandSites(t *testing.T) {
	if testing.Short() {
		t.Skip("opens a browser")
	}
	r := bigReport(t)
	if len(r.Sites) != 10_000 {
		t.Fatalf("%d sites, want 10000", len(r.Sites))
	}
	page := filepath.Join(t.TempDir(), "big.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTML(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, _ := os.Stat(page)
	if st.Size() >= 5<<20 {
		t.Errorf("page of 10,000 sites: %d bytes, want under 5 MiB", st.Size())
	}
	p, load := browsertest.Open(t, page, 1400, 900)
	ready := browsertest.Eval[string](t, p, `document.documentElement.dataset.ready`)
	t.Logf("10,000 sites: page %.2f MB, loaded and drawn in %v (script done at %s ms after navigation start)", float64(st.Size())/1e6, load, ready)
	var total uint64
	for _, s := range r.Sites {
		total += s.Bytes
	}
	if got := browsertest.Eval[string](t, p, `document.querySelector('#flame-total').dataset.total`); got != strconv.FormatUint(total, 10) {
		t.Errorf("flame total %s, report %d", got, total)
	}
	if errs, reqs := p.Problems(); len(errs) > 0 || len(reqs) > 0 {
		t.Errorf("console errors %q, requests %q: want none", errs, reqs)
	}
}

// TestHTMLEdgeCases: a site without a stack is drawn as "(no stack)" (its bytes in the graph),
// and a process that held no block shows no chart, not another process's.
func TestHTMLEdgeCases(t *testing.T) {
	if testing.Short() {
		t.Skip("opens a browser")
	}
	r := build(t, Meta{Command: []string{"edge"}},
		al(1*ms, 1, event.Malloc, 100, 0x10, nil),
		al(2*ms, 1, event.Malloc, 200, 0x20, stMain),
		al(3*ms, 2, event.Brk, 4096, 0, stBrk),
	)
	page := filepath.Join(t.TempDir(), "edge.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTML(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p, _ := browsertest.Open(t, page, 1200, 800)
	if got := browsertest.Eval[[]string](t, p, `[document.querySelector('#flame-total').dataset.total,
		document.querySelector('#flame g[data-name="(no stack)"] rect').getAttribute('width')]`); got[0] != "4396" || got[1] == "" {
		t.Errorf("flame total %s, (no stack) frame %s px wide: want 4396 and a frame", got[0], got[1])
	}
	p.Click(t, "#tab-time")
	one := browsertest.Eval[string](t, p, `document.querySelector('#tl-info').dataset.peak`)
	browsertest.Eval[bool](t, p, `(() => { const s = document.querySelector('#proc');
		s.value = [...s.options].find((o) => o.text.includes('(2')).value; s.dispatchEvent(new Event('change')); return true; })()`)
	two := browsertest.Eval[string](t, p, `document.querySelector('#chart').textContent`)
	if one != "300" || two != "no memory held in this selection (count mode tracks no blocks)" {
		t.Errorf("pid 1's chart peaks at %s (want 300); pid 2's chart reads %q (want no chart)", one, two)
	}
	if errs, reqs := p.Problems(); len(errs) > 0 || len(reqs) > 0 {
		t.Errorf("console errors %q, requests %q: want none", errs, reqs)
	}
}
