// SPDX-License-Identifier: MIT

// Package workload embeds the small C test programs built by
// `make -C workload` (echo server/client, allocpattern, chain, threadalloc,
// burst, dlctor with libdlctor.so, norandom, twins, tailcall, and the allocount.so LD_PRELOAD counter)
// and extracts them for use.
package workload

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

//go:embed all:bin
var binFS embed.FS

// Paths holds the absolute paths of the extracted workload binaries.
type Paths struct {
	Server       string // echo-server SOCKET_PATH NCLIENTS
	Client       string // echo-client raw|stdio SOCKET_PATH MESSAGES SIZE
	AllocPattern string // allocpattern [ROUNDS]
	Chain        string // chain [ROUNDS]
	Allocount    string // allocount.so, for LD_PRELOAD with ALLOCOUNT_DIR
	ThreadAlloc  string // threadalloc [THREADS [ROUNDS]]: threads of malloc/free pairs, 16 B to 64 KiB and some mmapped
	Burst        string // burst [N]: N malloc(64) back to back, then N frees
	DlCtor       string // dlctor LIBRARY: dlopen LIBRARY and exit at once
	DlCtorLib    string // libdlctor.so: its constructor mallocs through three levels of its own functions
	NoRandom     string // norandom PROGRAM [ARG...]: exec PROGRAM with address-space randomization off
	Twins        string // twins [ROUNDS]: twin callers whose malloc entries share pc, sp and fp
	TailCall     string // tailcall: mallocs under functions that left by tail calls (-O2 -g)
	// The echo server and client built against musl ("": this build had no musl-gcc).
	ServerMusl, ClientMusl string
}

// ErrMissing is returned by Extract when udstrace was built without the
// workload binaries (plain `go build` without running make first).
var ErrMissing = errors.New("workload binaries missing from this build: build udstrace with make")

// Extract writes the embedded binaries into dir, which the caller created.
// Files are created exclusively with mode 0555: anyone may read and run them,
// and only their creator may change them (by changing their mode first) — as
// long as dir, too, is writable by the creator alone, since whoever may write
// dir may rename or replace what is in it.
func Extract(dir string) (Paths, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Paths{}, err
	}
	var p Paths
	for _, f := range p.files() {
		data, err := binFS.ReadFile("bin/" + f.name)
		if f.optional && err == nil && len(data) == 0 {
			continue // built without its compiler: the path stays ""
		}
		if errors.Is(err, fs.ErrNotExist) || (err == nil && len(data) == 0) {
			return Paths{}, fmt.Errorf("%w (bin/%s not embedded)", ErrMissing, f.name)
		}
		if err != nil {
			return Paths{}, err
		}
		path := filepath.Join(abs, f.name)
		if err := writeExcl(path, data); err != nil {
			return Paths{}, err
		}
		*f.dst = path
	}
	return p, nil
}

// Names lists the files Extract writes.
func Names() []string {
	var p Paths
	var out []string
	for _, f := range p.files() {
		out = append(out, f.name)
	}
	return out
}

type file struct {
	name     string
	dst      *string
	optional bool // may be built empty (its compiler was missing)
}

func (p *Paths) files() []file {
	return []file{
		{name: "echo-server", dst: &p.Server},
		{name: "echo-client", dst: &p.Client},
		{name: "allocpattern", dst: &p.AllocPattern},
		{name: "chain", dst: &p.Chain},
		{name: "allocount.so", dst: &p.Allocount},
		{name: "threadalloc", dst: &p.ThreadAlloc},
		{name: "burst", dst: &p.Burst},
		{name: "dlctor", dst: &p.DlCtor},
		{name: "libdlctor.so", dst: &p.DlCtorLib},
		{name: "norandom", dst: &p.NoRandom},
		{name: "twins", dst: &p.Twins},
		{name: "tailcall", dst: &p.TailCall},
		{name: "echo-server-musl", dst: &p.ServerMusl, optional: true},
		{name: "echo-client-musl", dst: &p.ClientMusl, optional: true},
	}
}

func writeExcl(path string, data []byte) error {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o500)
	if err != nil {
		return err
	}
	_, err = fd.Write(data)
	if err == nil {
		err = fd.Chmod(0o555) // not subject to umask
	}
	if cerr := fd.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("extract %s: %w", path, err)
	}
	return nil
}
