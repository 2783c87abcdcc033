package report

// Folding keeps memory bounded when thousands of short-lived processes come and go: the first
// Options.MaxProcs processes seen keep their entries; any later one is merged, once it has exited,
// into one entry per (comm, executable), its sites merged with the group's by stack.

// foldDelay is how long (event time) an exited process waits before folding, so that events
// read after its exit (other CPUs' ring-buffer records) still find it.
const foldDelay = uint64(1e9)

// exited queues p for folding once its late events are in.
func (b *Builder) exited(p *proc) {
	if b.opts.MaxProcs <= 0 || p.group > 0 {
		return
	}
	b.exitedQ = append(b.exitedQ, p)
	if !b.opts.FoldAtEnd {
		b.foldExited(false)
	}
}

// Settle folds every exited process due for folding; call it once all events are in.
func (b *Builder) Settle() { b.foldExited(true) }

func (b *Builder) foldExited(all bool) {
	n := 0
	for ; n < len(b.exitedQ); n++ {
		q := b.exitedQ[n]
		if !all && q.exitTime+foldDelay > b.latest {
			break
		}
		if q.ordinal >= b.opts.MaxProcs {
			b.fold(q) // the first MaxProcs processes seen (the traced command first) keep their entries
		}
	}
	b.exitedQ = append(b.exitedQ[:0], b.exitedQ[n:]...)
	if b.dead > 1024 && 2*b.dead > len(b.procs)+len(b.order) {
		b.compact()
	}
}

// fold merges exited process p into its group and forgets it.
func (b *Builder) fold(p *proc) {
	key := p.comm + "\x00" + p.exe
	g := b.groups[key]
	if g == nil {
		if b.groups == nil {
			b.groups = make(map[string]*proc)
		}
		g = &proc{idx: b.nextIdx, comm: p.comm, exe: p.exe, exited: true, afterDone: true}
		b.nextIdx++
		b.groups[key] = g
		b.procs = append(b.procs, g)
	}
	g.group++
	b.folded++
	g.addTotals(p)
	moved := make(map[*site]*site, len(p.sites))
	for _, s := range p.sites {
		gs := b.siteOf(g, s.kind, s.stack, s.file)
		gs.count += s.count
		gs.failed += s.failed
		gs.bytes += s.bytes
		gs.outCount += s.outCount
		gs.outBytes += s.outBytes
		gs.retOlder.Count += s.retOlder.Count
		gs.retOlder.Bytes += s.retOlder.Bytes
		if s.retAny && (!gs.retAny || s.retOldest < gs.retOldest) {
			gs.retOldest, gs.retAny = s.retOldest, true
		}
		moved[s] = gs
		b.unlink(s)
	}
	for i := range b.pending {
		if gs, ok := moved[b.pending[i].s]; ok {
			b.pending[i].s = gs
		}
	}
	p.remapLeft(moved)
	p.gone, p.sites, p.timeline, p.overflow, p.after = true, nil, nil, nil, nil
	b.dead++
	if b.cur[p.pid] == p {
		delete(b.cur, p.pid)
	}
	if b.last == p {
		b.last = nil
	}
}

// unlink takes a folded process's site out of the hash chains; order drops it at compaction.
func (b *Builder) unlink(s *site) {
	link := b.sites[s.hash]
	if link == s {
		if s.next == nil {
			delete(b.sites, s.hash)
		} else {
			b.sites[s.hash] = s.next
		}
	} else {
		for x := link; x != nil; x = x.next {
			if x.next == s {
				x.next = s.next
				break
			}
		}
	}
	s.gone, s.next = true, nil
	b.dead++
}

// compact drops folded processes and sites from procs and order.
func (b *Builder) compact() {
	procs := b.procs[:0]
	for _, p := range b.procs {
		if !p.gone {
			procs = append(procs, p)
		}
	}
	clear(b.procs[len(procs):])
	b.procs = procs
	order := b.order[:0]
	for _, s := range b.order {
		if !s.gone {
			s.pos = len(order)
			order = append(order, s)
		}
	}
	clear(b.order[len(order):])
	b.order = order
	b.dead = 0
}

// addTotals adds p's per-process figures to group g.
func (g *proc) addTotals(p *proc) {
	for k := range g.heap {
		g.heap[k].Calls += p.heap[k].Calls
		g.heap[k].Bytes += p.heap[k].Bytes
		g.heap[k].Failed += p.heap[k].Failed
		g.inside[k].Count += p.inside[k].Count
		g.inside[k].Bytes += p.inside[k].Bytes
	}
	g.allocs += p.allocs
	g.allocBytes += p.allocBytes
	g.frees += p.frees
	g.nullFrees += p.nullFrees
	g.unmatched += p.unmatched
	g.outCount += p.outCount
	g.outBytes += p.outBytes
	g.foldFiles(p)
	g.mmapCalls += p.mmapCalls
	g.mmapBytes += p.mmapBytes
	g.mremap += p.mremap
	g.mremapB += p.mremapB
	g.munmap += p.munmap
	g.brkCalls += p.brkCalls
	g.brkBytes += p.brkBytes
	for i, n := range p.sock.Counts {
		g.sock.Counts[i] += n
	}
	if f := p.sock.FirstTime; f != 0 && (g.sock.FirstTime == 0 || f < g.sock.FirstTime) {
		g.sock.FirstTime = f
	}
	g.exitTime = max(g.exitTime, p.exitTime)
}
