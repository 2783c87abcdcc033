package session

import (
	"github.com/udstrace/udstrace/pkg/report"
)

// labelContainers gives each process of rep its cgroup v2 path, container id and pod UID, as
// read when it exec'd or was first seen (an exited process keeps them); with prune, the pids the
// report no longer lists are forgotten (a snapshot: the trace goes on). The caller holds bmu, so
// that no pid is noted between the report's making and the pruning.
func (s *Session) labelContainers(rep *report.Report, prune bool) {
	listed := make(map[uint32]bool, len(rep.Processes))
	for i := range rep.Processes {
		p := &rep.Processes[i]
		if p.FoldedProcesses > 0 {
			continue // pid 0 stands for many exited processes
		}
		listed[p.PID] = true
		in := s.cgroups.Get(p.PID)
		p.Cgroup, p.ContainerID, p.PodUID = in.Path, in.ContainerID, in.PodUID
	}
	if prune {
		s.cgroups.Keep(func(pid uint32) bool { return listed[pid] })
	}
}
