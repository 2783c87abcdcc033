package cgroupinfo

import (
	"os"
	"testing"
)

const (
	id  = "9e3c3f4c6a5f1d2b8e7a6c5d4b3a29180f7e6d5c4b3a291807f6e5d4c3b2a190"
	id2 = "4b1f9d6e2c8a7b3f5e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a69788776655443"
	uid = "3e61c214-bc3e-4e3c-9a3e-1c2f5a6b7d8e"
)

// Paths as the runtimes make them (the shapes seen in /proc/PID/cgroup on real nodes).
func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, path, id, pod string
	}{
		{"containerd, systemd driver, burstable", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/cri-containerd-" + id + ".scope", id, uid},
		{"containerd, systemd driver, guaranteed", "/kubepods.slice/kubepods-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/cri-containerd-" + id + ".scope", id, uid},
		{"containerd, cgroupfs driver", "/kubepods/besteffort/pod" + uid + "/" + id, id, uid},
		{"cri-o, systemd driver", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/crio-" + id + ".scope", id, uid},
		{"cri-o, the container's own sub-cgroup", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/crio-" + id + ".scope/container", id, uid},
		{"cri-o's conmon: not the container", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/crio-conmon-" + id + ".scope", "", uid},
		{"docker, systemd driver", "/system.slice/docker-" + id + ".scope", id, ""},
		{"docker, cgroupfs driver", "/docker/" + id, id, ""},
		{"kubernetes through dockershim", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/docker-" + id + ".scope", id, uid},
		{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope", id, ""},
		{"podman, container sub-cgroup", "/machine.slice/libpod-" + id + ".scope/container", id, ""},
		{"docker in docker: the innermost id", "/docker/" + id2 + "/docker/" + id, id, ""},
		{"from a container's cgroup namespace", "/../../kubepods-besteffort-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice/cri-containerd-" + id + ".scope", id, uid},
		{"pod slice only (the pause process's parent)", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61c214_bc3e_4e3c_9a3e_1c2f5a6b7d8e.slice", "", uid},
		{"a systemd service", "/system.slice/ssh.service", "", ""},
		{"a user session", "/user.slice/user-1000.slice/session-3.scope", "", ""},
		{"the root", "/", "", ""},
		{"the kubepods slice itself", "/kubepods.slice/kubepods-burstable.slice", "", ""},
		{"short hex is no id", "/system.slice/docker-abc123.scope", "", ""},
		{"not hex", "/system.slice/docker-" + id[:63] + "g.scope", "", ""},
		{"pod uid upper case", "/kubepods/pod3E61C214-BC3E-4E3C-9A3E-1C2F5A6B7D8E/" + id, id, uid},
	} {
		got := Parse(c.path)
		if got.ContainerID != c.id || got.PodUID != c.pod || got.Path != c.path {
			t.Errorf("%s: Parse(%q) = %+v, want id %q pod %q", c.name, c.path, got, c.id, c.pod)
		}
	}
}

// A live process's path is read from /proc, and a fork's child gets its parent's until it execs.
func TestCacheReadsAndInherits(t *testing.T) {
	pid := uint32(os.Getpid())
	path, err := Read(pid)
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	c := NewCache()
	c.Note(pid)
	if got := c.Get(pid); got.Path != path {
		t.Fatalf("Get = %+v, want path %q", got, path)
	}
	c.Inherit(1<<22+1, pid) // a pid no process has
	if got := c.Get(1<<22 + 1); got.Path != path {
		t.Errorf("child: %+v, want its parent's path %q", got, path)
	}
	c.Keep(func(p uint32) bool { return p == pid })
	if got := c.Get(1<<22 + 1); got != (Info{}) {
		t.Errorf("pruned child still known: %+v", got)
	}
	if len(c.infos) != 1 {
		t.Errorf("%d interned paths, want 1", len(c.infos))
	}
	c.Keep(func(uint32) bool { return false })
	if len(c.infos) != 0 || len(c.procs) != 0 {
		t.Errorf("after pruning everything: %d paths, %d pids", len(c.infos), len(c.procs))
	}
}
