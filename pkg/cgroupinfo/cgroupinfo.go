// Package cgroupinfo names a process's container: its cgroup v2 path, and the container id and Kubernetes pod UID in it.
package cgroupinfo

import (
	"fmt"
	"os"
	"strings"
	"sync"
)

// Info is what a process's cgroup v2 path says of its container; empty fields are not known.
type Info struct {
	Path        string // the cgroup v2 path, as /proc/PID/cgroup gives it (relative to the reader's cgroup namespace)
	ContainerID string // 64 hex digits: containerd, cri-o, docker, podman
	PodUID      string // Kubernetes pod UID, with dashes
}

// Parse reads the container id and pod UID out of a cgroup v2 path, as the runtimes name their
// cgroups under systemd (cri-containerd-ID.scope, crio-ID.scope, docker-ID.scope,
// libpod-ID.scope in kubepods-…-podUID.slice, the UID's dashes made underscores) and under
// cgroupfs (kubepods/burstable/podUID/ID, docker/ID). The innermost id wins (a container's
// own sub-cgroups, such as podman's /container, keep its id); cri-o's conmon scope is not a container.
func Parse(path string) Info {
	in := Info{Path: path}
	for _, seg := range strings.Split(path, "/") {
		if uid, ok := podUID(seg); ok {
			in.PodUID = uid
			continue
		}
		if id, ok := containerID(seg); ok {
			in.ContainerID = id
		}
	}
	return in
}

// containerID recognizes a segment naming a container: ID, or PREFIX-ID.scope.
func containerID(seg string) (string, bool) {
	seg = strings.TrimSuffix(seg, ".scope")
	if strings.HasPrefix(seg, "crio-conmon-") {
		return "", false // cri-o's monitor process, beside the container
	}
	if i := strings.LastIndexAny(seg, "-:"); i >= 0 { // cri-containerd-ID, crio-ID, docker-ID, libpod-ID, cri-containerd:ID
		seg = seg[i+1:]
	}
	if len(seg) != 64 || !isHex(seg) {
		return "", false
	}
	return seg, true
}

// podUID recognizes a segment naming a pod: podUID (cgroupfs) or kubepods-QOS-podUID.slice (systemd).
func podUID(seg string) (string, bool) {
	seg = strings.TrimSuffix(seg, ".slice")
	i := strings.LastIndex(seg, "pod")
	if i < 0 || (i > 0 && seg[i-1] != '-') {
		return "", false
	}
	uid := strings.ReplaceAll(seg[i+3:], "_", "-")
	if !isUUID(uid) {
		return "", false
	}
	return strings.ToLower(uid), true
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// isUUID: 8-4-4-4-12 hex digits.
func isUUID(s string) bool {
	parts := strings.Split(s, "-")
	if len(parts) != 5 {
		return false
	}
	for i, n := range []int{8, 4, 4, 4, 12} {
		if len(parts[i]) != n || !isHex(parts[i]) {
			return false
		}
	}
	return true
}

// Read returns the cgroup v2 path of a live process ("0::PATH" in /proc/PID/cgroup).
func Read(pid uint32) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("reading cgroup of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("reading cgroup of %d: no cgroup v2 entry", pid)
}

// Cache remembers each process's Info from when it could be read (at exec, or when first seen),
// so that an exited process keeps its labels; paths are interned, as a machine's processes
// share few cgroups. Safe for concurrent use.
type Cache struct {
	mu    sync.Mutex
	procs map[uint32]*Info
	infos map[string]*Info
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{procs: map[uint32]*Info{}, infos: map[string]*Info{}}
}

// Note reads pid's cgroup now (at its exec, or when first seen), replacing what was known of the pid.
func (c *Cache) Note(pid uint32) {
	path, err := Read(pid)
	if err != nil {
		return // gone, or no cgroup v2: nothing is known
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	in := c.infos[path]
	if in == nil {
		p := Parse(path)
		in = &p
		c.infos[path] = in
	}
	c.procs[pid] = in
}

// Inherit gives a forked child its parent's cgroup (a fork stays in its parent's cgroup).
func (c *Cache) Inherit(child, parent uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.procs[parent]; in != nil {
		c.procs[child] = in
	} else {
		delete(c.procs, child)
	}
}

// Get returns what is known of pid.
func (c *Cache) Get(pid uint32) Info {
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.procs[pid]; in != nil {
		return *in
	}
	return Info{}
}

// Keep forgets every pid keep says no to (those no report lists any more), and the paths
// no pid is in.
func (c *Cache) Keep(keep func(pid uint32) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	used := map[*Info]bool{}
	for pid, in := range c.procs {
		if !keep(pid) {
			delete(c.procs, pid)
			continue
		}
		used[in] = true
	}
	for path, in := range c.infos {
		if !used[in] {
			delete(c.infos, path)
		}
	}
}
