package symbolize

import (
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/internal/safeopen"
)

// privateDir makes sure dir is a directory of this user's that no one else can write: a file
// found there is taken as downloaded (and still checked by build-id).
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating debuginfod cache %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("checking debuginfod cache %s: %w", dir, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(sys.Uid) != os.Geteuid() || st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("checking debuginfod cache %s: not a directory of yours that only you can write", dir)
	}
	return nil
}

// hasBuildID reports whether path is a regular file (not a link) of at most max bytes, an ELF
// file with this build-id.
func hasBuildID(path, id string, max int64) bool { return fileBuildID(path, max) == id }

func fileBuildID(path string, max int64) (id string) {
	defer func() {
		if recovered(recover()) != nil {
			id = ""
		}
	}()
	fh, err := safeopen.Open(path, safeopen.Options{MaxSize: max})
	if err != nil {
		return ""
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return ""
	}
	f, err := elf.NewFile(io.NewSectionReader(fh, 0, st.Size()))
	if err != nil {
		return ""
	}
	return readBuildID(f, st.Size())
}

// trim removes the least recently used entries past CacheBytes.
func (d *Debuginfod) trim() {
	if d.cfg.CacheBytes <= 0 {
		return
	}
	ents, err := os.ReadDir(d.cfg.CacheDir)
	if err != nil {
		return
	}
	type entry struct {
		dir  string
		size int64
		used time.Time
	}
	var all []entry
	var total int64
	for _, e := range ents {
		if !e.IsDir() || !hexID.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(d.cfg.CacheDir, e.Name())
		st, err := os.Lstat(filepath.Join(dir, "debuginfo"))
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		all = append(all, entry{dir, st.Size(), st.ModTime()})
		total += st.Size()
	}
	slices.SortFunc(all, func(a, b entry) int { return a.used.Compare(b.used) })
	for _, e := range all[:max(len(all)-1, 0)] { // the newest stays, whatever its size
		if total <= d.cfg.CacheBytes {
			return
		}
		if os.RemoveAll(e.dir) == nil {
			total -= e.size
		}
	}
}
