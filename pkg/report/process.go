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
	s.addOut(n, n*size)
}

// addOut adds (or with two's-complement arguments, takes away) outstanding blocks to s and its
// process: to its anonymous memory, or, for a file mapping, to the bytes it keeps mapped.
func (s *site) addOut(n, bytes uint64) {
	s.outCount += n
	s.outBytes += bytes
	s.p.mem.record(s, n, bytes)
	if s.file {
		s.p.fileOut += bytes
		return
	}
	s.p.outCount += n
	s.p.outBytes += bytes
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
	blk.s.addOut(-blk.count(), -blk.size)
}

// unmap releases [addr, addr+size): the region starting there when it is exactly that, else
// whatever parts of regions the range covers (carve).
func (p *proc) unmap(addr, size uint64) {
	if blk, ok := p.regions[addr]; ok && (size == 0 || size == blk.size) {
		delete(p.regions, addr)
		forgetRegionName(blk, addr)
		p.drop(blk)
		return
	}
	if size != 0 {
		p.carve(addr, size)
	}
}

// carve takes [addr, addr+size) out of every region it overlaps: an munmap of part of a region
// or of several, or a MAP_FIXED mapping over what was there (ld.so maps a library whole, then
// its segments and its .bss over it). A region cut in its middle keeps its start and loses the
// bytes (its two ends stay one block, as the one call that made them).
func (p *proc) carve(addr, size uint64) {
	end := addr + size
	for start, blk := range p.regions {
		rend := start + blk.size
		if start >= end || rend <= addr {
			continue
		}
		lo, hi := max(start, addr), min(rend, end)
		if lo == start && hi == rend { // covered whole
			delete(p.regions, start)
			forgetRegionName(blk, start)
			p.drop(blk)
			continue
		}
		cut := hi - lo
		if blk.s != nil {
			blk.s.addOut(0, -cut)
		}
		blk.size -= cut
		if lo > start {
			p.regions[start] = blk
			continue
		}
		// Cut in front: the region now starts where the range ends.
		name := regionName(blk, start)
		forgetRegionName(blk, start)
		delete(p.regions, start)
		if old, ok := p.regions[hi]; ok {
			p.drop(old) // overlapping regions: a release we missed
		}
		p.regions[hi] = blk
		if name != "" {
			blk.s.p.nameRegion(hi, name)
		}
	}
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
