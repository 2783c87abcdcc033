package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/pkg/event"
)

// TestFileMapsApart: an mmap of a file is a mapping, not an allocation: the process's
// allocations and outstanding count only anonymous memory, the file's mappings are counted apart
// and listed by file (named by their mapping events, an unnamed one as such), its sites are
// marked file_backed and left out of the views unless IncludeFileMaps; munmap and mremap keep
// the file's figures, and the file's name follows a moved mapping.
func TestFileMapsApart(t *testing.T) {
	b := NewBuilder(testOpts(Options{}))
	feed(t, b,
		al(1, 1, event.Malloc, 100, 0x10, stMain),
		al(2, 1, event.Mmap, 1<<20, 0x7000000, stMmap),         // anonymous
		fileMap(al(3, 1, event.Mmap, 8192, 0x8000000, stMmap)), // libc, named below
		fileMap(al(4, 1, event.Mmap, 4096, 0x9000000, stMmap)), // named below, then moved
		fileMap(al(5, 1, event.Mmap, 4096, 0xa000000, stMmap)), // never named
	)
	// Each mapping event follows its mmap.
	b.MapFile(1, 0x8000000, "/lib/libc.so.6")
	b.MapFile(1, 0x9000000, "/etc/data")
	b.MapFile(1, 0x7000000, "/not/a/file")                   // an anonymous region is not renamed
	feed(t, b, al(6, 1, event.Munmap, 4096, 0x8000000, nil)) // half of libc's mapping goes
	feed(t, b, &event.Alloc{Time: 7, PID: 1, Kind: event.Mremap, Size: 8192, Addr: 0xb000000, OldAddr: 0x9000000, OldSize: 4096, StackID: sid(stMmap)})
	r := b.Finish(&fakeSym{}, Meta{})

	p := r.Processes[0]
	if p.Allocations != 2 || p.AllocatedBytes != 100+1<<20 || p.OutstandingBytes != 100+1<<20 {
		t.Errorf("allocations %d / %d B, outstanding %d B: want the malloc and the anonymous mmap only", p.Allocations, p.AllocatedBytes, p.OutstandingBytes)
	}
	if p.MappedFileCalls != 4 || p.MappedFileBytes != 8192+4096+4096+8192 || p.MappedFileOutstandingBytes != 4096+8192+4096 {
		t.Errorf("file mappings %d calls, %d B, %d B still mapped", p.MappedFileCalls, p.MappedFileBytes, p.MappedFileOutstandingBytes)
	}
	want := map[string]FileMapping{
		"/lib/libc.so.6":   {Maps: 1, Bytes: 8192, OutstandingBytes: 4096},
		"/etc/data":        {Maps: 1, Bytes: 4096, OutstandingBytes: 8192}, // the mremap moved it: still the file's
		"(file not named)": {Maps: 2, Bytes: 4096 + 8192, OutstandingBytes: 4096},
	}
	for _, fm := range r.FileMappings {
		w, ok := want[fm.File]
		if !ok || fm.Maps != w.Maps || fm.Bytes != w.Bytes || fm.OutstandingBytes != w.OutstandingBytes || fm.PID != 1 {
			t.Errorf("file mapping %+v, want %+v", fm, w)
		}
		delete(want, fm.File)
	}
	if len(want) != 0 {
		t.Errorf("files missing: %v", want)
	}
	var fileSites, anonSites int
	for _, s := range r.Sites {
		if s.FileBacked {
			fileSites++
		} else {
			anonSites++
		}
	}
	if fileSites == 0 || anonSites == 0 {
		t.Fatalf("%d file-backed and %d other sites", fileSites, anonSites)
	}
	views := func() (string, string, int) {
		var text, folded bytes.Buffer
		if err := r.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteFolded(&folded, FoldedOptions{}); err != nil {
			t.Fatal(err)
		}
		return text.String(), folded.String(), len(r.Profile().Sample)
	}
	text, folded, samples := views()
	if strings.Contains(text, "mmap (file)") || samples != anonSites || strings.Count(folded, "\n") != anonSites {
		t.Errorf("default views show file mappings: %d samples, %d folded lines for %d allocation sites\n%s", samples, strings.Count(folded, "\n"), anonSites, text)
	}
	if !strings.Contains(text, "FILE MAPPINGS") || !strings.Contains(text, "/lib/libc.so.6") {
		t.Errorf("no FILE MAPPINGS section naming libc:\n%s", text)
	}
	r.IncludeFileMaps()
	text, folded, samples = views()
	if !strings.Contains(text, "mmap (file)") || samples != len(r.Sites) || strings.Count(folded, "\n") != len(r.Sites) {
		t.Errorf("IncludeFileMaps: %d samples, %d folded lines for %d sites\n%s", samples, strings.Count(folded, "\n"), len(r.Sites), text)
	}
}
