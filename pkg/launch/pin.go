package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// pinArg, after helperArg and before the command, gives the FileID the command's binary must have.
const pinArg = "__udstrace_pin"

// FileID names one file for the life of a run: its device and inode, kept from reuse by an open
// descriptor (a file deleted while open keeps its inode, so no replacement can get the same number).
type FileID struct {
	Dev, Ino uint64
	Owner    uint32 // who may own the file and its directory besides root: udstrace's own user
	hold     *os.File
}

// Close lets go of the file once no process will be started from it any more.
func (f *FileID) Close() error {
	if f == nil || f.hold == nil {
		return nil
	}
	return f.hold.Close()
}

func (f FileID) String() string { return fmt.Sprintf("%d:%d", f.Dev, f.Ino) }

// arg is the FileID as the helper is given it: device, inode and owner.
func (f FileID) arg() string { return fmt.Sprintf("%d:%d:%d", f.Dev, f.Ino, f.Owner) }

// Pin checks that path is a binary only root can change, in a directory only root can change, and
// returns its identity for Options.Pinned, holding the file open until Close.
//
// The helper checks the identity again right before it execs, after it dropped to the workload's
// user. That the file and its directory belong to root and are writable by root alone is what makes
// the check hold up to the exec: nobody else can rename, replace or rewrite either in between. A
// binary that is not (a FIFO, a symlink, a file swapped in) is refused rather than run.
//
// Run without root (with capabilities), udstrace extracts the binaries as its own user: that user,
// and root, are then the ones allowed to own them.
func Pin(path string) (*FileID, error) {
	id, err := rootOnly(path, uint32(os.Geteuid()))
	if err != nil {
		return nil, fmt.Errorf("checking workload binary %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("checking workload binary %s: %w", path, err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Dev != id.Dev || st.Ino != id.Ino {
		f.Close()
		return nil, fmt.Errorf("checking workload binary %s: it changed while being checked", path)
	}
	id.hold = f
	return id, nil
}

// checkPinned is the helper's check, right before its exec.
func checkPinned(path, want string) error {
	var dev, ino uint64
	var owner uint32
	if _, err := fmt.Sscanf(want, "%d:%d:%d", &dev, &ino, &owner); err != nil {
		return fmt.Errorf("checking %s before running it: bad pin %q", path, want)
	}
	want = FileID{Dev: dev, Ino: ino}.String()
	id, err := rootOnly(path, owner)
	if err != nil {
		return fmt.Errorf("checking %s before running it: %w", path, err)
	}
	if id.String() != want {
		return fmt.Errorf("checking %s before running it: it was replaced (device:inode %s, extracted as %s)", path, id, want)
	}
	return nil
}

// rootOnly returns the identity of a regular file that root (or owner) owns and alone may write, in
// a directory that root (or owner) owns and alone may write.
func rootOnly(path string, owner uint32) (*FileID, error) {
	dir := filepath.Dir(path)
	var ds syscall.Stat_t
	if err := syscall.Lstat(dir, &ds); err != nil {
		return nil, err
	}
	if ds.Mode&syscall.S_IFMT != syscall.S_IFDIR || (ds.Uid != 0 && ds.Uid != owner) || ds.Mode&0o022 != 0 {
		return nil, fmt.Errorf("its directory %s is not a directory only root (or udstrace's own user) can write (uid %d, mode %#o)", dir, ds.Uid, ds.Mode&0o7777)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return nil, err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || (st.Uid != 0 && st.Uid != owner) || st.Mode&0o022 != 0 {
		return nil, fmt.Errorf("not a regular file only root (or udstrace's own user) can write (uid %d, mode %#o)", st.Uid, st.Mode&0o177777)
	}
	return &FileID{Dev: st.Dev, Ino: st.Ino, Owner: owner}, nil
}
