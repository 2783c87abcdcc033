package session

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// straceMmaps runs argv under strace (the oracle) and returns its mmap calls: per file (strace
// -y names the fd's file) the calls and bytes, and the anonymous calls.
func straceMmaps(t *testing.T, argv ...string) (files map[string][2]uint64, anon uint64) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "strace.txt")
	if b, err := exec.Command("strace", append([]string{"-f", "-y", "-e", "trace=mmap", "-o", out}, argv...)...).CombinedOutput(); err != nil {
		t.Fatalf("strace: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`mmap\([^,]+, (\d+), [^,]+, ([A-Z_|]+), (-1|\d+)(?:<([^>]*)>)?, [^)]+\) = 0x`)
	files = map[string][2]uint64{}
	for _, m := range call.FindAllStringSubmatch(string(data), -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		if strings.Contains(m[2], "MAP_ANONYMOUS") {
			anon++
			continue
		}
		f := files[m[4]]
		files[m[4]] = [2]uint64{f[0] + 1, f[1] + n}
	}
	if len(files) == 0 {
		t.Fatalf("strace saw no file mapping:\n%s", data)
	}
	return files, anon
}

// TestFileMappingsApart: what a program maps from files (the loader mapping libc, ld.so.cache)
// is counted apart from its allocations, file by file, exactly as strace sees the mmap calls; the
// default views show allocations only (the top site of `ls -l /` is a heap or anonymous one, the
// pprof profile and folded stacks have no file-backed site), and the text lists the files.
func TestFileMappingsApart(t *testing.T) {
	testenv.NeedRoot(t)
	wantFiles, wantAnon := straceMmaps(t, "/bin/true")
	o := testOptions(t)
	o.Command = []string{"/bin/true"}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Processes) != 1 {
		t.Fatalf("%d processes", len(rep.Processes))
	}
	p := rep.Processes[0]
	var calls, bytes_ uint64
	for _, f := range wantFiles {
		calls += f[0]
		bytes_ += f[1]
	}
	if p.MappedFileCalls != calls || p.MappedFileBytes != bytes_ || p.MmapCalls-p.MappedFileCalls != wantAnon {
		t.Errorf("mapped files %d calls, %d B, anonymous mmaps %d; strace: %d, %d B, %d",
			p.MappedFileCalls, p.MappedFileBytes, p.MmapCalls-p.MappedFileCalls, calls, bytes_, wantAnon)
	}
	if p.AllocatedBytes >= p.MappedFileBytes {
		t.Errorf("true allocated %d B and mapped %d B of files: the loader's mappings are still counted as allocations", p.AllocatedBytes, p.MappedFileBytes)
	}
	got := map[string][2]uint64{}
	for _, fm := range rep.FileMappings {
		got[fm.File] = [2]uint64{fm.Maps, fm.Bytes}
	}
	for f, w := range wantFiles {
		if got[f] != w {
			t.Errorf("%s: udstrace %v (maps, bytes), strace %v", f, got[f], w)
		}
	}
	if len(got) != len(wantFiles) {
		t.Errorf("files %v, strace %v", got, wantFiles)
	}
	var marked int
	for _, s := range rep.Sites {
		if s.FileBacked {
			marked++
			if s.Kind != "mmap" {
				t.Errorf("file-backed site of kind %s", s.Kind)
			}
		}
	}
	if marked == 0 {
		t.Errorf("no site marked file_backed in JSON")
	}

	// ls -l /: its top site is an allocation, and no view shows a file mapping.
	o = testOptions(t)
	o.Command = []string{"/bin/ls", "-l", "/"}
	rep, err = Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var text, folded bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	top := regexp.MustCompile(`(?m)^1\. site #(\d+)  (\S+)( \(file\))?  `).FindStringSubmatch(text.String())
	if top == nil || top[3] != "" {
		t.Errorf("top site of ls -l / is %q, want a heap or anonymous one:\n%s", top, text.String())
	}
	if !strings.Contains(text.String(), "FILE MAPPINGS") || !strings.Contains(text.String(), "libc.so.6") {
		t.Errorf("no FILE MAPPINGS section naming libc:\n%s", text.String())
	}
	shown, weighed := 0, 0
	for _, s := range rep.Sites {
		if !s.FileBacked {
			shown++
			if s.Bytes > 0 {
				weighed++
			}
		}
	}
	if n := len(rep.Profile().Sample); n != shown || shown == len(rep.Sites) {
		t.Errorf("pprof has %d samples; %d allocation sites of %d", n, shown, len(rep.Sites))
	}
	if err := rep.WriteFolded(&folded, report.FoldedOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(folded.String(), "\n"); n != weighed {
		t.Errorf("%d folded lines for %d allocation sites of bytes > 0", n, weighed)
	}
}
