package report

import "github.com/udstrace/udstrace/pkg/event"

// Proc records a fork, exec or exit.
func (b *Builder) Proc(ev *event.Proc) {
	b.latest = max(b.latest, ev.Time)
	switch ev.Kind {
	case event.ProcFork:
		p := b.cur[ev.PID]
		if p == nil || p.exited {
			p = b.newProc(ev.PID)
		}
		p.ppid = ev.PPID
		if ev.Comm != "" {
			p.comm = ev.Comm
		}
		if parent := b.cur[ev.PPID]; parent != nil && parent != p && !parent.exited {
			p.comm = cmpOr(p.comm, parent.comm)
			p.exe = cmpOr(p.exe, parent.exe)
			if ev.SharedVM {
				b.share(parent, p)
			} else {
				p.live = inherit(parent.live, p.live)
				p.regions = inherit(parent.regions, p.regions)
			}
		}
	case event.ProcExec:
		p := b.procAt(ev.PID, ev.Time)
		if ev.Comm != "" {
			p.comm = ev.Comm
		}
		if ev.Exe != "" {
			p.exe = ev.Exe
		}
		b.retire(p) // the old image is gone; its blocks stay outstanding
	case event.ProcRename:
		b.procAt(ev.PID, ev.Time).rename(ev.TID, ev.Comm)
	case event.ProcExit:
		p := b.procAt(ev.PID, ev.Time)
		if ev.Comm != "" {
			p.comm = ev.Comm
		}
		p.exited, p.exitCode, p.exitTime = true, ev.ExitCode, ev.Time
		b.retire(p)
		if p.hasSock && !p.afterDone {
			p.settleAfter()
		}
		b.exited(p)
	}
}

// Named records what the latest incarnation of pid is called and runs, for a process the trace did
// not see exec or fork (attach, system-wide): it fills only what no event has told.
func (b *Builder) Named(pid uint32, comm, exe string) {
	p := b.cur[pid]
	if p == nil {
		p = b.newProc(pid)
	}
	p.comm = cmpOr(p.comm, comm)
	p.exe = cmpOr(p.exe, exe)
}

// Comm is the latest incarnation of pid's command name, "" if unknown.
func (b *Builder) Comm(pid uint32) string {
	if p := b.cur[pid]; p != nil {
		return p.comm
	}
	return ""
}

// inherit gives a forked child its parent's blocks so that its frees of them match, without owning them.
func inherit(parent, child map[uint64]block) map[uint64]block {
	if len(parent) == 0 {
		return child
	}
	if child == nil {
		child = make(map[uint64]block, len(parent))
	}
	for a, blk := range parent {
		if _, ok := child[a]; !ok {
			child[a] = block{nil, blk.size, blk.t, blk.n}
		}
	}
	return child
}

// Sockets records the final socket-syscall counters of one process.
func (b *Builder) Sockets(s event.SocketStats) {
	p := b.cur[s.PID]
	if p == nil {
		p = b.newProc(s.PID)
	}
	first := p.sock.FirstTime
	if first == 0 || (s.FirstTime != 0 && s.FirstTime < first) {
		first = s.FirstTime
	}
	if p.afterDone && p.sock.FirstTime != 0 {
		first = p.sock.FirstTime // the split is settled; later counters only add calls
	}
	p.sock, p.hasSock = s, true
	p.sock.FirstTime = first
	if !p.afterDone && (first != 0 || p.exited) {
		p.settleAfter()
	}
}

func (p *proc) addBlock(m *map[uint64]block, s *site, addr, size, t uint64) {
	p.addBlocks(m, s, addr, size, t, 1)
}

// addBlocks records a live block at addr standing for n blocks of size bytes (n > 1: sampling).
func (p *proc) addBlocks(m *map[uint64]block, s *site, addr, size, t, n uint64) {
	if *m == nil {
		*m = make(map[uint64]block)
	}
	if old, ok := (*m)[addr]; ok {
		p.drop(old) // a release we missed: the address is being handed out again
	}
	(*m)[addr] = block{s, n * size, t, n}
	s.outCount += n
	s.outBytes += n * size
	p.outCount += n
	p.outBytes += n * size
}

// release forgets the block at addr and reports whether there was one; a miss counts as an unmatched free when asked.
func (p *proc) release(m map[uint64]block, addr uint64, countMiss bool) bool {
	blk, ok := m[addr]
	if !ok {
		if countMiss {
			p.unmatched++
		}
		return false
	}
	delete(m, addr)
	p.drop(blk)
	return true
}

// drop removes a block from the outstanding totals: its site's and the process's that made it (in
// a shared address space, not always p).
func (p *proc) drop(blk block) {
	if blk.s == nil {
		return // inherited from the parent: never counted here
	}
	blk.s.outCount -= blk.count()
	blk.s.outBytes -= blk.size
	blk.s.p.outCount -= blk.count()
	blk.s.p.outBytes -= blk.size
}

// unmap releases the region starting at addr; a shorter unmap trims its front, other partial unmaps are ignored.
func (p *proc) unmap(addr, size uint64) {
	blk, ok := p.regions[addr]
	if !ok {
		return
	}
	delete(p.regions, addr)
	if size == 0 || size >= blk.size {
		p.drop(blk)
		return
	}
	if blk.s != nil {
		blk.s.outBytes -= size
		blk.s.p.outBytes -= size
	}
	if old, ok := p.regions[addr+size]; ok {
		p.drop(old) // overlapping regions: a release we missed
	}
	p.regions[addr+size] = block{blk.s, blk.size - size, blk.t, blk.n}
}

// settleAfter turns the timeline into per-site figures once the first socket time is known.
func (p *proc) settleAfter() {
	first := p.sock.FirstTime
	if first != 0 {
		for _, e := range p.timeline {
			if e.t >= first {
				p.addAfter(e.s, e.bytes)
			}
		}
		for s, a := range p.overflow {
			if p.after == nil {
				p.after = make(map[*site]*agg)
			}
			x := p.after[s]
			if x == nil {
				x = &agg{}
				p.after[s] = x
			}
			x.count += a.count
			x.bytes += a.bytes
		}
		p.afterApprox = p.overflow != nil && p.overflowMin < first
	}
	p.timeline, p.overflow, p.afterDone = nil, nil, true
}
