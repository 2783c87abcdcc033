package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/udstrace/udstrace/pkg/loader"
	"golang.org/x/sys/unix"
)

// translateKernel words loader errors for users.
func translateKernel(err error, msg string) string {
	switch {
	case errors.Is(err, loader.ErrMissingFeature):
		return msg + " (udstrace needs Linux ≥ 5.15 with BTF, uprobes and ring buffers)"
	case errors.Is(err, loader.ErrVerifier):
		return msg
	case errors.Is(err, loader.ErrStatic):
		return msg + ": udstrace traces libc's allocator; a static binary has none it can probe"
	case errors.Is(err, loader.ErrGoProgram):
		return msg + " (use Go's own profiler: runtime/pprof heap profiles)"
	case errors.Is(err, loader.ErrNoLibc):
		return msg + ": udstrace traces libc's allocator; this program (e.g. a Go binary) does not use it"
	case strings.Contains(msg, "tracefs"):
		return msg + ": mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
	}
	return msg
}

// hasBPFCaps reports whether the process holds CAP_BPF and CAP_PERFMON without being root.
func hasBPFCaps() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return has(unix.CAP_BPF) && has(unix.CAP_PERFMON) && has(unix.CAP_SYS_ADMIN)
}

// openOutput prepares -o's file: written to a temporary file beside it, created only when the
// report is written (a killed trace leaves nothing), and renamed over it only on success.
func openOutput(path string) (w io.Writer, commit func(ok bool) error, err error) {
	if path == "" || path == "-" {
		return os.Stdout, func(bool) error { return nil }, nil
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSymlink != 0 {
			return nil, nil, errors.New("refusing to write report through symlink " + path + ": remove it or choose another -o")
		}
		if !fi.Mode().IsRegular() {
			// A device or pipe (/dev/null, a FIFO): write to it; renaming over it would replace it.
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return nil, nil, errors.New("opening " + path + " for the report: " + err.Error())
			}
			return f, func(bool) error { return f.Close() }, nil
		}
	}
	dir := filepath.Dir(path)
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return nil, nil, errors.New("cannot write the report in " + dir + ": " + err.Error() + ": choose another -o")
	}
	lw := &lazyFile{dir: dir}
	commit = func(ok bool) error {
		if lw.f == nil {
			if !ok {
				return nil
			}
			if _, err := lw.Write(nil); err != nil {
				return err
			}
		}
		tmp := lw.f.Name()
		cerr := lw.f.Close()
		if !ok || cerr != nil {
			os.Remove(tmp)
			return cerr
		}
		if err := os.Chmod(tmp, 0o644); err != nil {
			os.Remove(tmp)
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return errors.New("writing report to " + path + ": " + err.Error())
		}
		return nil
	}
	return lw, commit, nil
}

// lazyFile creates its temporary file on the first write.
type lazyFile struct {
	dir string
	f   *os.File
}

func (l *lazyFile) Write(p []byte) (int, error) {
	if l.f == nil {
		f, err := os.CreateTemp(l.dir, ".udstrace-report-*")
		if err != nil {
			return 0, errors.New("creating report file in " + l.dir + ": " + err.Error())
		}
		l.f = f
	}
	return l.f.Write(p)
}
