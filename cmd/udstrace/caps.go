package main

import (
	"strings"

	"golang.org/x/sys/unix"
)

// The capabilities udstrace needs when not root, found by running each command as nobody with
// a set and with one less (TestCapabilities): BPF programs and maps, and uprobes and perf
// events; other users' /proc/PID/{maps,root} (CAP_DAC_READ_SEARCH is not enough: the root link
// needs ptrace access); and becoming --user for the echo workload. CAP_SYS_ADMIN is not needed.
var (
	capsAlways = []capability{{unix.CAP_BPF, "CAP_BPF"}, {unix.CAP_PERFMON, "CAP_PERFMON"}}
	capsOthers = capability{unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE"} // attach, trace, top
	capsEcho   = []capability{{unix.CAP_SETUID, "CAP_SETUID"}, {unix.CAP_SETGID, "CAP_SETGID"}}
)

type capability struct {
	bit  uint
	name string
}

// neededCaps is the capability set the subcommand needs without root.
func neededCaps(sub string, o options) []capability {
	need := append([]capability(nil), capsAlways...)
	if sub != "run" {
		need = append(need, capsOthers)
	}
	if o.workload != "" {
		need = append(need, capsEcho...)
	}
	return need
}

// capsProblem says which capabilities a non-root udstrace lacks, "" when none.
func capsProblem(sub string, o options) string {
	if unix.Geteuid() == 0 {
		return ""
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	_ = unix.Capget(&hdr, &data[0]) // on error every capability reads as missing
	var need, missing []string
	for _, c := range neededCaps(sub, o) {
		need = append(need, c.name)
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			missing = append(missing, c.name)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "needs root, or the capabilities " + strings.Join(need, "+") + " (missing " + strings.Join(missing, ", ") + "): run it with sudo"
}
