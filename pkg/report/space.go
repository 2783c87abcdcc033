package report

// Blocks belong to an address space, not to a process. A child made by vfork (or clone with
// CLONE_VM and not CLONE_THREAD) runs in its parent's address space until it execs or exits, and
// what it allocates there its parent may free: the processes sharing a space share one map of
// live blocks (and one of regions). A block stays the allocating process's: its site and its
// outstanding figures are that process's until any process of the space frees it; when the
// child leaves (exec, exit) its blocks stay live in the space, and they are retired, like all the
// space's blocks, when its last process leaves.

// space is an address space two or more processes ran in.
type space struct {
	id      uint32 // the pid whose address space it is (the kernel keys picked blocks by it)
	users   int    // processes running in it now
	live    map[uint64]block
	regions map[uint64]block
}

// share makes child run in parent's address space (a fork with SharedVM).
func (b *Builder) share(parent, child *proc) {
	sp := parent.space
	if sp == nil {
		if parent.live == nil {
			parent.live = make(map[uint64]block)
		}
		if parent.regions == nil {
			parent.regions = make(map[uint64]block)
		}
		sp = &space{id: parent.pid, users: 1, live: parent.live, regions: parent.regions}
		parent.space = sp
	}
	for a, blk := range child.live { // none in practice: the fork comes before the child's events
		sp.live[a] = blk
	}
	for a, blk := range child.regions {
		sp.regions[a] = blk
	}
	sp.users++
	child.space, child.live, child.regions = sp, sp.live, sp.regions
}

// leave takes p out of the address space it shares (it execs or exits) and reports whether
// others still run there: then its blocks stay live in the space and are not p's to retire.
func (p *proc) leave() bool {
	sp := p.space
	if sp == nil {
		return false
	}
	p.space = nil
	sp.users--
	if sp.users == 0 {
		return false // the last one: the space's blocks are retired with it
	}
	p.left = sp
	p.live, p.regions = nil, nil
	return true
}

// LiveAddrs names the address space the latest incarnation of pid runs in as the kernel keys it
// (pid, or the parent a vfork child runs in) and lists the heap blocks still held there, none
// while other processes still run in it.
func (b *Builder) LiveAddrs(pid uint32) (space uint32, addrs []uint64) {
	p := b.cur[pid]
	if p == nil {
		return pid, nil
	}
	id := pid
	if p.space != nil {
		if p.space.users > 1 {
			return p.space.id, nil
		}
		id = p.space.id
	}
	out := make([]uint64, 0, len(p.live))
	for a := range p.live {
		out = append(out, a)
	}
	return id, out
}

// remapLeft points the blocks folded process p left live in a space still in use at the group's
// sites, so that their frees update the group's figures.
func (p *proc) remapLeft(moved map[*site]*site) {
	if p.left == nil || p.left.users == 0 {
		return
	}
	for _, m := range []map[uint64]block{p.left.live, p.left.regions} {
		for a, blk := range m {
			if gs, ok := moved[blk.s]; ok {
				blk.s = gs
				m[a] = blk
			}
		}
	}
}
