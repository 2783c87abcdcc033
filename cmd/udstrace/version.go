package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/udstrace/udstrace/pkg/loader"
)

// buildCommit is set by make build (-ldflags -X) for builds without VCS stamping (-buildvcs=false).
var buildCommit string

// printVersion says what this udstrace is (version, commit, Go and cilium/ebpf versions) and
// what it finds in the running kernel, for bug reports.
func printVersion(w io.Writer) {
	version, commit, ebpfVersion := "(devel)", "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					commit += " (modified)"
				}
			}
		}
		for _, d := range bi.Deps {
			if d.Path == "github.com/cilium/ebpf" {
				ebpfVersion = d.Version
			}
		}
	}
	if commit == "unknown" && buildCommit != "" {
		commit = buildCommit
	}
	fmt.Fprintf(w, "udstrace %s\ncommit:      %s\ngo:          %s\ncilium/ebpf: %s\n", version, commit, runtime.Version(), ebpfVersion)
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		fmt.Fprintf(w, "kernel:      %s %s\n", unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:]))
	}
	for _, f := range loader.Features() {
		state := "yes"
		if f.Err != nil {
			state = "no (" + strings.TrimSpace(f.Err.Error()) + ")"
			if f.Required {
				state += ": required"
			}
		}
		fmt.Fprintf(w, "  %s: %s\n", f.What, state)
	}
}
