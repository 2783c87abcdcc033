package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// programNames returns udstrace's BPF program names as the kernel shows them (15 characters at most),
// read from the committed object so the list follows the BPF code.
func programNames() (map[string]bool, error) {
	spec, err := ebpf.LoadCollectionSpec("pkg/loader/udstrace_x86_bpfel.o")
	if err != nil {
		return nil, fmt.Errorf("reading udstrace's BPF object (run stress from the repository root): %w", err)
	}
	out := map[string]bool{}
	for name := range spec.Programs {
		if len(name) > 15 {
			name = name[:15]
		}
		out[name] = true
	}
	return out, nil
}

// bpfIDs are BPF object IDs by kind.
type bpfIDs struct{ prog, link, mp map[int]bool }

func newIDs() bpfIDs { return bpfIDs{prog: map[int]bool{}, link: map[int]bool{}, mp: map[int]bool{}} }

// addFrom records the BPF objects behind pid's file descriptors.
func (b bpfIDs) addFrom(pid int) {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	for _, f := range fds {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				continue
			}
			switch k {
			case "prog_id":
				b.prog[n] = true
			case "link_id":
				b.link[n] = true
			case "map_id":
				b.mp[n] = true
			}
		}
	}
}

func (b bpfIDs) count() string {
	return fmt.Sprintf("%d programs, %d links, %d maps", len(b.prog), len(b.link), len(b.mp))
}

// bpfState is what bpftool shows now.
type bpfState struct {
	progs map[int]string // id -> name
	links map[int]int    // id -> program id
	maps  map[int]string
}

func currentBPF() (*bpfState, error) {
	st := &bpfState{progs: map[int]string{}, links: map[int]int{}, maps: map[int]string{}}
	var progs []struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	if err := bpftoolJSON(&progs, "prog", "show"); err != nil {
		return nil, err
	}
	for _, p := range progs {
		st.progs[p.ID] = p.Name
	}
	var links []struct {
		ID     int `json:"id"`
		ProgID int `json:"prog_id"`
	}
	if err := bpftoolJSON(&links, "link", "show"); err != nil {
		return nil, err
	}
	for _, l := range links {
		st.links[l.ID] = l.ProgID
	}
	var maps []struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	if err := bpftoolJSON(&maps, "map", "show"); err != nil {
		return nil, err
	}
	for _, m := range maps {
		st.maps[m.ID] = m.Name
	}
	return st, nil
}

func bpftoolJSON(v any, args ...string) error {
	out, err := exec.Command("bpftool", append([]string{"-j"}, args...)...).Output()
	if err != nil {
		return fmt.Errorf("bpftool %s: %w", strings.Join(args, " "), err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		return nil
	}
	return json.Unmarshal(out, v)
}

// remaining lists the objects of ids that still exist.
func (st *bpfState) remaining(ids bpfIDs) []string {
	var out []string
	for id := range ids.prog {
		if name, ok := st.progs[id]; ok {
			out = append(out, fmt.Sprintf("program %d (%s)", id, name))
		}
	}
	for id := range ids.link {
		if p, ok := st.links[id]; ok {
			out = append(out, fmt.Sprintf("link %d (program %d)", id, p))
		}
	}
	for id := range ids.mp {
		if name, ok := st.maps[id]; ok {
			out = append(out, fmt.Sprintf("map %d (%s)", id, name))
		}
	}
	sort.Strings(out)
	return out
}

// orphans lists programs named like udstrace's, newer than minID, that no process holds, neither
// directly nor through a link it holds: what a crashed tracer would leave pinned or attached.
func (st *bpfState) orphans(names map[string]bool, minID int) []int {
	held := newIDs()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err == nil {
			held.addFrom(pid)
		}
	}
	heldProgs := map[int]bool{}
	for id := range held.prog {
		heldProgs[id] = true
	}
	for lid := range held.link {
		if p, ok := st.links[lid]; ok {
			heldProgs[p] = true
		}
	}
	var out []int
	for id, name := range st.progs {
		if id > minID && names[name] && !heldProgs[id] {
			out = append(out, id)
		}
	}
	sort.Ints(out)
	return out
}

func (st *bpfState) maxProgID() int {
	m := 0
	for id := range st.progs {
		m = max(m, id)
	}
	return m
}

// uprobeEvents returns the lines of the tracefs uprobe_events files.
func uprobeEvents() map[string]bool {
	out := map[string]bool{}
	for _, f := range []string{"/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				out[l] = true
			}
		}
	}
	return out
}
