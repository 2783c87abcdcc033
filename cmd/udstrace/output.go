package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// errOutput marks a -o path udstrace refuses; main reports it with the usage exit status.
var errOutput = errors.New("refusing -o")

// stdStreams are the names of udstrace's own stdout and stderr: written in place, whatever
// they are (a pipe, a terminal, a file the shell opened).
var stdStreams = map[string]*os.File{
	"-": os.Stdout, "/dev/stdout": os.Stdout, "/dev/fd/1": os.Stdout, "/proc/self/fd/1": os.Stdout,
	"/dev/stderr": os.Stderr, "/dev/fd/2": os.Stderr, "/proc/self/fd/2": os.Stderr,
}

// openOutput prepares -o's file. A regular file (or a new one) is written to a temporary file
// beside it, created only when the report is written (a killed trace leaves nothing), and
// renamed over it only on success: nothing is ever written through a symlink, a FIFO or a file
// another user planted. A character device (/dev/null, a terminal) is written in place. Every
// step goes through the directory's file descriptor, so a directory swapped after the checks
// changes nothing, and no open can block: a FIFO is never opened at all.
func openOutput(path string) (w io.Writer, commit func(ok bool) error, err error) {
	if path == "" {
		return os.Stdout, func(bool) error { return nil }, nil
	}
	if f, ok := stdStreams[filepath.Clean(path)]; ok || path == "-" {
		if path == "-" {
			f = os.Stdout
		}
		return f, func(bool) error { return nil }, nil
	}
	dir, base := filepath.Split(path)
	if base == "" || base == "." || base == ".." {
		return nil, nil, fmt.Errorf("%w: %s is a directory: name a file in it", errOutput, path)
	}
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: directory %s: %v: choose another -o", errOutput, path, dir, err)
	}
	closeDir := func() { unix.Close(dfd) }
	var dst unix.Stat_t
	if err := unix.Fstat(dfd, &dst); err != nil {
		closeDir()
		return nil, nil, fmt.Errorf("checking directory %s: %w", dir, err)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		closeDir()
		return nil, nil, fmt.Errorf("%w: %s: cannot write in %s: %v: choose another -o", errOutput, path, dir, err)
	}
	var st unix.Stat_t
	switch err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case errors.Is(err, unix.ENOENT): // a new file
	case err != nil:
		closeDir()
		return nil, nil, fmt.Errorf("%w: %s: %v: choose another -o", errOutput, path, err)
	default:
		if msg := refuseExisting(path, dir, &st, &dst); msg != "" {
			closeDir()
			return nil, nil, fmt.Errorf("%w: %s", errOutput, msg)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR {
			defer closeDir()
			return openDevice(dfd, base, path, &st)
		}
	}
	lw := &lazyFile{dir: dir, dfd: dfd}
	commit = func(ok bool) error {
		defer closeDir()
		if lw.f == nil {
			if !ok {
				return nil
			}
			if _, err := lw.Write(nil); err != nil {
				return err
			}
		}
		cerr := lw.f.Close()
		if !ok || cerr != nil {
			unix.Unlinkat(dfd, lw.name, 0)
			return cerr
		}
		// rename replaces the name, whatever it became meanwhile, and never follows it.
		if err := unix.Renameat(dfd, lw.name, dfd, base); err != nil {
			unix.Unlinkat(dfd, lw.name, 0)
			return fmt.Errorf("writing report to %s: %w", path, err)
		}
		return nil
	}
	return lw, commit, nil
}

// refuseExisting says why an existing -o path is not written, "" when it may be.
func refuseExisting(path, dir string, st, dst *unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFCHR:
	case unix.S_IFLNK:
		return fmt.Sprintf("%s is a symlink: udstrace never writes through one: give the real path, or -o /dev/stdout", path)
	case unix.S_IFDIR:
		return fmt.Sprintf("%s is a directory: name a file in it", path)
	case unix.S_IFIFO:
		return fmt.Sprintf("%s is a FIFO: udstrace writes only regular files: pipe stdout instead (-o - | ...)", path)
	default:
		return fmt.Sprintf("%s is not a regular file: udstrace writes only regular files: choose another -o", path)
	}
	// fs.protected_regular's rule: in a sticky directory others can write to, a file owned by
	// someone else (not the directory's owner) may have been planted for us.
	shared := dst.Mode&unix.S_ISVTX != 0 && dst.Mode&0o022 != 0
	euid := uint32(os.Geteuid())
	if shared && st.Uid != euid && st.Uid != dst.Uid {
		return fmt.Sprintf("%s belongs to uid %d in the shared sticky directory %s: another user may have planted it: remove it or choose another -o", path, st.Uid, dir)
	}
	return ""
}

// openDevice opens a character device without blocking and checks it is the one examined.
func openDevice(dfd int, base, path string, st *unix.Stat_t) (io.Writer, func(bool) error, error) {
	fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v: choose another -o", errOutput, path, err)
	}
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil || fst.Mode&unix.S_IFMT != unix.S_IFCHR || fst.Rdev != st.Rdev || fst.Ino != st.Ino {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("%w: %s changed while udstrace opened it: choose another -o", errOutput, path)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK) // a terminal's writes may wait
	}
	f := os.NewFile(uintptr(fd), path)
	return f, func(bool) error { return f.Close() }, nil
}

// lazyFile creates its temporary file, in the checked directory, on the first write.
type lazyFile struct {
	dir  string
	dfd  int
	name string
	f    *os.File
}

func (l *lazyFile) Write(p []byte) (int, error) {
	if l.f == nil {
		var rnd [8]byte
		rand.Read(rnd[:])
		name := ".udstrace-report-" + hex.EncodeToString(rnd[:])
		fd, err := unix.Openat(l.dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return 0, fmt.Errorf("creating report file in %s: %w", l.dir, err)
		}
		l.name, l.f = name, os.NewFile(uintptr(fd), filepath.Join(l.dir, name))
	}
	return l.f.Write(p)
}
