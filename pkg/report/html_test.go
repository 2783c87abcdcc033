package report

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// pageData extracts the page's data from its script element.
func pageData(t *testing.T, page []byte) htmlData {
	t.Helper()
	m := regexp.MustCompile(`(?s)<script type="application/json" id="udstrace-data">(.*?)</script>`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("no data script in the page")
	}
	var d htmlData
	if err := json.Unmarshal(m[1], &d); err != nil {
		t.Fatalf("page data: %v", err)
	}
	return d
}

// TestHTMLSelfContained: the page fetches nothing (no URL to load, a policy forbidding every
// request), and its data is the report's: every site with its stack outermost first, the
// timeline and the peak; a symbol that closes the script element cannot end it early.
func TestHTMLSelfContained(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	leakCacheChurn(b, 3)
	feed(t, b, fileMap(al(200*sec, 3, event.Mmap, 1<<20, 0x9000000, stMmap)))
	r := b.Finish(&fakeSym{}, Meta{Command: []string{"prog", "</script><script>alert(1)</script>"}})
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.Bytes()
	if n := bytes.Count(page, []byte("</script>")); n != 2 {
		t.Errorf("%d </script> in the page, want 2 (the data's and the code's)", n)
	}
	if !bytes.Contains(page, []byte(`content="default-src 'none';`)) {
		t.Errorf("no content security policy forbidding requests")
	}
	for _, re := range []string{`(?i)\b(src|href)\s*=\s*["']?[a-z]+:`, `(?i)https?://`, `(?i)@import`, `(?i)url\(`} {
		if loc := regexp.MustCompile(re).FindIndex(page); loc != nil {
			t.Errorf("page loads something (%s): %q", re, page[max(0, loc[0]-40):min(len(page), loc[1]+40)])
		}
	}
	d := pageData(t, page)
	if len(d.Sites) != len(r.Sites) || len(d.Timeline) != 1 || len(d.Peak) != 1 || !strings.Contains(d.Title, "</script>") {
		t.Fatalf("page has %d sites, %d timelines, %d peaks, title %q; report %d sites", len(d.Sites), len(d.Timeline), len(d.Peak), d.Title, len(r.Sites))
	}
	file := 0
	for i, s := range d.Sites {
		rs := r.Sites[i]
		if s.ID != rs.ID || s.Bytes != rs.Bytes || s.Count != rs.Count || s.OutBytes != rs.OutstandingBytes || len(s.Stack) != len(rs.Stack) {
			t.Errorf("page site %+v, report site %+v", s, rs)
			continue
		}
		for j, fi := range s.Stack { // outermost first
			if got, want := d.Frames[fi][0], frameName(&rs.Stack[len(rs.Stack)-1-j]); got != want {
				t.Errorf("site %d frame %d: %v, want %s", s.ID, j, got, want)
			}
		}
		if s.Class == "file" {
			file++
		}
	}
	var peak uint64
	for _, s := range d.Sites {
		peak += s.Peak
	}
	if file != 1 || peak != r.Peak[0].Bytes || d.FileMaps {
		t.Errorf("%d file sites, peak weights sum to %d (peak %d), file maps shown %v; want 1, equal, false", file, peak, r.Peak[0].Bytes, d.FileMaps)
	}
}
