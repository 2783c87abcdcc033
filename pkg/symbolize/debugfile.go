package symbolize

import (
	"bytes"
	"debug/elf"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/udstrace/udstrace/internal/safeopen"
)

// maxDebuglinkSize bounds .gnu_debuglink; it holds a file name and a CRC.
const maxDebuglinkSize = 4096

// debugInfo is what a separate debug file contributes.
type debugInfo struct {
	syms []rawSym
	dw   *dwarfInfo
}

// readDebuglink returns the .gnu_debuglink file name and CRC32, "" if none.
func readDebuglink(f *elf.File, size int64) (string, uint32) {
	s := f.Section(".gnu_debuglink")
	if s == nil || s.Size > maxDebuglinkSize {
		return "", 0
	}
	d, err := sectionData(s, size)
	if err != nil {
		return "", 0
	}
	n := bytes.IndexByte(d, 0)
	if n <= 0 {
		return "", 0
	}
	crcOff := align4(uint64(n) + 1)
	if crcOff+4 > uint64(len(d)) {
		return "", 0
	}
	name := string(d[:n])
	// Only a plain file name: a hostile link must not walk out of the dirs.
	if name == "." || name == ".." || strings.ContainsAny(name, "/\\") {
		return "", 0
	}
	return name, f.ByteOrder.Uint32(d[crcOff:])
}

// fetchDebugFile asks the debuginfod servers for the debug file by build-id; nil when none gave
// a usable one. The client checked the build-id before keeping the file; it is checked again as
// it is read, since the cache may hold a file from an earlier trace.
func (b *Binary) fetchDebugFile() (*debugInfo, string) {
	id := b.buildID
	p := b.opts.Debuginfod.Find(id)
	if p == "" {
		return nil, ""
	}
	if d := openDebugFile(p, false, func(f *elf.File, _ *os.File, size int64) bool {
		return readBuildID(f, size) == id
	}); d != nil {
		return d, p
	}
	return nil, ""
}

// findDebugFile looks up a separate debug file here: by build-id, then by .gnu_debuglink; it
// returns nil quietly when none is usable.
func (b *Binary) findDebugFile() (*debugInfo, string) {
	self := ""
	if b.opts.Path != "" {
		self = filepath.Join(b.opts.Root, b.opts.Path)
	}
	if id := b.buildID; len(id) > 2 {
		for _, dir := range b.opts.debugDirs() {
			p := filepath.Join(b.opts.Root, dir, ".build-id", id[:2], id[2:]+".debug")
			if d := openDebugFile(p, true, func(f *elf.File, _ *os.File, size int64) bool {
				return readBuildID(f, size) == id
			}); d != nil {
				return d, p
			}
		}
	}
	if b.debuglink == "" || b.opts.Path == "" {
		return nil, ""
	}
	dir := filepath.Dir(b.opts.Path)
	cands := []string{
		filepath.Join(b.opts.Root, dir, b.debuglink),
		filepath.Join(b.opts.Root, dir, ".debug", b.debuglink),
	}
	for _, dd := range b.opts.debugDirs() {
		cands = append(cands, filepath.Join(b.opts.Root, dd, dir, b.debuglink))
	}
	for i, p := range cands {
		if p == self {
			continue
		}
		// Beside the binary the directory is the binary owner's: a symlink there is not followed.
		if d := openDebugFile(p, i >= 2, func(_ *elf.File, r *os.File, _ int64) bool {
			return fileCRC(r) == b.debugCRC
		}); d != nil {
			return d, p
		}
	}
	return nil, ""
}

// openDebugFile loads symbols and DWARF from path if verify accepts it; the
// file is closed before returning since everything needed is in memory. The
// path may be a user's (a debuglink beside their binary names a FIFO, say):
// only a regular file is opened, without blocking.
func openDebugFile(path string, follow bool, verify func(*elf.File, *os.File, int64) bool) (d *debugInfo) {
	defer func() {
		if recovered(recover()) != nil {
			d = nil
		}
	}()
	fh, err := safeopen.Open(path, safeopen.Options{Follow: follow})
	if err != nil {
		return nil
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil || st.Size() <= 0 {
		return nil
	}
	size := st.Size()
	f, err := elf.NewFile(io.NewSectionReader(fh, 0, size))
	if err != nil || !verify(f, fh, size) {
		return nil
	}
	syms, _ := readSymbols(f, size)
	dw, _ := loadDWARF(f, size)
	if len(syms) == 0 && dw == nil {
		return nil
	}
	return &debugInfo{syms: syms, dw: dw}
}

// fileCRC is the GNU debuglink CRC32 (IEEE) of the whole file.
func fileCRC(r io.ReaderAt) uint32 {
	h := crc32.NewIEEE()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, 1<<62)); err != nil {
		return 0
	}
	return h.Sum32()
}
