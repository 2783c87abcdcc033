// Package safeopen opens the files a root tracer reads on a traced process's behalf: executables,
// libraries, debug files and what their headers name, at paths a local user may control. A user
// can put a FIFO there (an open that blocks forever), a device (an open with side effects), a
// symlink to somewhere else, or a file too large to read. Open never blocks and never opens
// anything but a regular file of bounded size: it looks the path up with O_PATH (no open of the
// inode at all), checks that inode with fstat, and only then opens that same inode for reading.
package safeopen

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultMaxSize bounds the files Open accepts unless told otherwise: larger than any binary or
// separate debug file met in practice, small enough that a planted sparse file cannot make the
// tracer read for minutes.
const DefaultMaxSize = 4 << 30

var (
	// ErrNotRegular means the path names a FIFO, device, socket, directory or (not followed) symlink.
	ErrNotRegular = errors.New("not a regular file")
	// ErrTooLarge means the file is over the size bound.
	ErrTooLarge = errors.New("file too large")
)

// Options say how far Open trusts the path.
type Options struct {
	// Follow follows a symlink in the last component. Needed for the kernel's own links
	// (/proc/PID/exe, /proc/PID/map_files/…, /proc/self/fd/N) and for paths a program names
	// through symlinks (an interpreter, a library); the file reached is checked all the same.
	Follow bool
	// MaxSize bounds the file's size; 0 means DefaultMaxSize.
	MaxSize int64
}

func (o Options) limit() int64 {
	if o.MaxSize <= 0 {
		return DefaultMaxSize
	}
	return o.MaxSize
}

// Open opens path read-only if it is a regular file within the size bound. It never blocks on
// the file (a FIFO is refused before it is opened) and never opens a device.
func Open(path string, o Options) (*os.File, error) {
	flags := unix.O_PATH | unix.O_CLOEXEC
	if !o.Follow {
		flags |= unix.O_NOFOLLOW // O_PATH|O_NOFOLLOW yields the link itself: refused below
	}
	pfd, err := openRetry(path, flags)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("opening %s: %w (%s)", path, ErrNotRegular, kind(st.Mode))
	}
	if limit := o.limit(); st.Size > limit {
		return nil, fmt.Errorf("opening %s: %w (%d bytes, at most %d read)", path, ErrTooLarge, st.Size, limit)
	}
	// Reopening through /proc/self/fd reaches the inode just checked, whatever the path names now.
	fd, err := openRetry("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// ReadFile reads a whole file through Open: no more than the size bound, even if it grows.
func ReadFile(path string, o Options) ([]byte, error) {
	f, err := Open(path, o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, o.limit()))
}

// ReadHead reads at most n bytes from the start of a file opened through Open: enough for a
// "#!" line, whatever the file's size.
func ReadHead(path string, n int, o Options) ([]byte, error) {
	f, err := Open(path, o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	m, err := io.ReadFull(f, b)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return b[:m], err
}

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "not a file"
}
