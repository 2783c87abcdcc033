package report

import "github.com/udstrace/udstrace/pkg/event"

// Builder accumulates events; it is not safe for concurrent use.
type Builder struct {
	opts  Options
	procs []*proc          // every incarnation, in creation order
	cur   map[uint32]*proc // pid -> latest incarnation
	sites map[uint64]*site // stack hash -> chain of sites
	order []*site          // sites in creation order (id-1)
	last  *proc            // cache: consecutive events mostly come from one process
	// Blocks of execed or exited images younger than MinAge when retired: never freed now, but
	// still ageing. Older ones are only counted on their site (site.ret*).
	pending []block
	latest  uint64 // the latest event time seen: the default age reference
	nextIdx int    // next proc.idx
	lastID  int    // last site id handed out
	// Folding (Options.MaxProcs): exited processes wait in exitedQ until their late events are in.
	exitedQ []*proc
	seen    int              // processes seen, for proc.ordinal
	groups  map[string]*proc // folded processes by comm and executable
	folded  int              // processes folded so far
	dead    int              // folded procs and their sites still in procs/order, removed lazily
	kern    *kernelState     // --kernel (kernel.go)
}

// proc is one process incarnation (a reused pid gets a new one).
type proc struct {
	idx        int
	pid, ppid  uint32
	comm, exe  string
	threads    map[uint32]string // names of threads not named as the leader, by tid (threads.go)
	exited     bool
	exitCode   int
	exitTime   uint64
	heap       [kindSlots]CallCount
	allocs     uint64 // site calls
	allocBytes uint64
	frees      uint64
	nullFrees  uint64 // free(NULL): calls of free that release nothing
	unmatched  uint64
	outCount   uint64
	outBytes   uint64
	mmapCalls  uint64
	mmapBytes  uint64
	// File-backed mappings: not allocations (anonymous memory is), counted apart (filemaps.go).
	fileCalls   uint64
	fileBytes   uint64
	fileOut     uint64              // bytes still mapped
	files       map[string]*fileAgg // file name -> maps, bytes
	regionNames map[uint64]string   // live file regions' names by start address
	mremap      uint64
	mremapB     uint64
	munmap      uint64
	brkCalls    uint64
	brkBytes    uint64
	inside      [kindSlots]KernelReqs
	live        map[uint64]block // heap blocks by address
	regions     map[uint64]block // user mmap regions by start address
	space       *space           // the address space it shares with others (space.go), nil: its own
	left        *space           // the shared space it left, its blocks still live there
	sock        event.SocketStats
	hasSock     bool
	// Allocation timeline kept until the first socket time is known, for verdict (b).
	timeline    []tlEntry
	overflow    map[*site]*agg // allocations past the timeline cap
	overflowMin uint64
	afterDone   bool // after holds the final per-site figures; no more timeline
	afterApprox bool // overflow straddled the first socket time: after is an upper bound
	after       map[*site]*agg
	sites       []*site // this process's sites, for folding
	group       int     // processes folded into this one (0: a single process)
	ordinal     int     // how many processes were seen before this one
	gone        bool    // folded into a group: no longer reported

	mem *memTrack // memory over time and the peak (timeline.go); nil for a folded group
}

// block is a live heap block or mmap region; s is nil for blocks inherited across fork.
type block struct {
	s    *site
	size uint64 // bytes, all n copies together
	t    uint64 // allocation time, for outstanding ages
	n    uint64 // blocks this one stands for (sampling); 0 means 1
}

// count is how many blocks b stands for.
func (b block) count() uint64 { return max(b.n, 1) }

type tlEntry struct {
	t     uint64
	s     *site
	bytes uint64
}

type agg struct{ count, bytes uint64 }

// site is a (process, kind, stack id) triple.
type site struct {
	id       int
	p        *proc
	kind     event.Kind
	hash     uint64
	next     *site  // hash chain
	stack    uint64 // stack id (0: no stack)
	count    uint64
	failed   uint64
	bytes    uint64
	outCount uint64
	outBytes uint64
	file     bool // mmap or mremap of a file: a mapping, not an allocation
	pos      int  // index in Builder.order
	gone     bool
	// Retired blocks (their image is gone) already at least MinAge old, and the oldest's time.
	retOlder  BlockCount
	retOldest uint64
	retAny    bool
	// The thread that made the calls (0: none known, as in count mode; with threads, the last
	// one), and every such thread once there are two (threads.go).
	tid     uint32
	threads map[uint32]struct{}
	mem     siteMem // held bytes over time, and at the peak (timeline.go)
}

// NewBuilder returns an empty Builder.
func NewBuilder(opts Options) *Builder {
	if opts.TopSites <= 0 {
		opts.TopSites = 20
	}
	if opts.MaxTimeline <= 0 {
		opts.MaxTimeline = 1 << 20
	}
	return &Builder{
		opts:  opts,
		cur:   make(map[uint32]*proc),
		sites: make(map[uint64]*site),
	}
}

// newProc starts a new incarnation of pid.
func (b *Builder) newProc(pid uint32) *proc {
	p := &proc{idx: b.nextIdx, pid: pid, ordinal: b.seen, mem: &memTrack{clock: &b.latest}}
	b.nextIdx++
	b.seen++
	b.procs = append(b.procs, p)
	b.cur[pid] = p
	b.last = p
	return p
}

// procAt returns the incarnation of pid an event at time t belongs to.
func (b *Builder) procAt(pid uint32, t uint64) *proc {
	p := b.last
	if p == nil || p.pid != pid {
		p = b.cur[pid]
	}
	if p == nil || (p.exited && t > p.exitTime) {
		p = b.newProc(pid) // pid reused after an exit we saw
	}
	b.last = p
	return p
}

// Alloc records one allocator call or memory syscall; ev.Stack is retained.
func (b *Builder) Alloc(ev *event.Alloc) {
	p := b.procAt(ev.PID, ev.Time)
	if ev.Comm != "" {
		p.comm = ev.Comm
	}
	b.latest = max(b.latest, ev.Time)
	k := ev.Kind
	if int(k) >= kindSlots || k == event.KindNone {
		return
	}
	if ev.Weighted {
		b.weighted(p, ev)
		return
	}
	if ev.Inside != event.KindNone {
		// The allocator's own request to the kernel: the user call was counted already.
		slot := int(ev.Inside)
		if slot >= kindSlots {
			slot = 0 // an allocator kind we do not know: reported as "none"
		}
		in := &p.inside[slot]
		in.Count++
		if k != event.Munmap && !ev.Shrink && !ev.Failed && !(k == event.Brk && isShrink(ev.Size)) {
			in.Bytes += ev.Size
		}
		return
	}
	switch {
	case k.IsAlloc():
		p.countHeap(ev)
		s := b.call(p, ev)
		if !ev.Failed && ev.Addr != 0 {
			p.addBlock(&p.live, s, ev.Addr, ev.Size, ev.Time)
		}
		return
	case k.IsRealloc():
		p.countHeap(ev)
		s := b.call(p, ev)
		switch {
		case ev.OldAddr != 0 && ev.Size == 0 && ev.Addr == 0: // realloc(p, 0) freed p
			p.frees++
			p.release(p.live, ev.OldAddr, true)
		case ev.Failed: // the old block stays
		default:
			if ev.OldAddr != 0 {
				p.release(p.live, ev.OldAddr, false) // moved or resized in place
			}
			if ev.Addr != 0 {
				p.addBlock(&p.live, s, ev.Addr, ev.Size, ev.Time)
			}
		}
		return
	case k.IsFree():
		p.heap[k].Calls++
		if ev.Addr == 0 {
			if k == event.Free {
				p.nullFrees++ // free(NULL); delete of a null pointer is only a call
			}
		} else {
			p.frees++
			if !p.release(p.live, ev.Addr, true) {
				b.unmatchedFree(p, ev)
			}
		}
		return
	}
	switch k {
	case event.Mmap:
		p.mmapCalls++
		p.mmapBytes += ev.Size
		s := b.mapCall(p, ev, isFileMap(ev))
		if !ev.Failed {
			if uint32(ev.Flags)&mapFixed != 0 {
				p.carve(ev.Addr, ev.Size) // it replaces what was mapped there
			} else if old, ok := p.regions[ev.Addr]; ok {
				forgetRegionName(old, ev.Addr) // the new one is named by its own mapping event, if a file
			}
			p.addBlock(&p.regions, s, ev.Addr, ev.Size, ev.Time)
		}
	case event.Munmap:
		p.munmap++
		if !ev.Failed {
			p.unmap(ev.Addr, ev.Size)
		}
	case event.Mremap:
		p.mremap++
		p.mremapB += ev.Size
		old, file := p.regions[ev.OldAddr], false
		if old.s != nil {
			file = old.s.file // a moved file mapping stays one
		}
		s := b.mapCall(p, ev, file)
		if !ev.Failed {
			name := regionName(old, ev.OldAddr)
			forgetRegionName(old, ev.OldAddr)
			p.release(p.regions, ev.OldAddr, false)
			p.addBlock(&p.regions, s, ev.Addr, ev.Size, ev.Time)
			if name != "" {
				p.nameRegion(ev.Addr, name)
			}
		}
	case event.Brk:
		p.brkCalls++
		if ev.Shrink || ev.Size == 0 || isShrink(ev.Size) {
			return // a query or a shrink: not an allocation
		}
		p.brkBytes += ev.Size
		b.call(p, ev)
	}
}

// unmatchedFree counts a free of a block never seen allocated at its caller's site; the caller's
// frame is resolved only now, for the rare free that needs it.
func (b *Builder) unmatchedFree(p *proc, ev *event.Alloc) {
	stack := ev.StackID
	if stack == 0 && ev.Caller != 0 && b.opts.CallerStack != nil {
		stack = b.opts.CallerStack(ev.PID, ev.Caller)
	}
	if stack != 0 {
		b.site(p, event.Free, stack).count++
	}
}

// isShrink catches a negative brk growth passed as two's complement.
func isShrink(size uint64) bool { return int64(size) < 0 }

func (p *proc) countHeap(ev *event.Alloc) {
	c := &p.heap[ev.Kind]
	c.Calls++
	c.Bytes += ev.Size
	if ev.Failed {
		c.Failed++
	}
}

// call counts one user allocation call at its site and returns the site.
func (b *Builder) call(p *proc, ev *event.Alloc) *site {
	s := b.site(p, ev.Kind, ev.StackID)
	s.add(ev)
	p.allocs++
	p.allocBytes += ev.Size
	p.note(s, ev.Time, ev.Size, b.opts.MaxTimeline, b.opts.LiveSockets)
	return s
}

// add counts one call at s: its thread, bytes and failure.
func (s *site) add(ev *event.Alloc) {
	s.thread(ev.TID)
	s.count++
	s.bytes += ev.Size
	if ev.Failed {
		s.failed++
	}
}

// note remembers an allocation's time for verdict (b) until the first socket time is known.
func (p *proc) note(s *site, t, bytes uint64, maxTimeline int, liveSockets bool) {
	if p.afterDone {
		if p.hasSock && p.sock.FirstTime != 0 && t >= p.sock.FirstTime {
			p.addAfter(s, bytes)
		}
		return
	}
	if liveSockets {
		return // no socket call yet, and it would have been told: not after one
	}
	if len(p.timeline) < maxTimeline {
		p.timeline = append(p.timeline, tlEntry{t, s, bytes})
		return
	}
	if p.overflow == nil {
		p.overflow = make(map[*site]*agg)
		p.overflowMin = t
	}
	p.overflowMin = min(p.overflowMin, t)
	a := p.overflow[s]
	if a == nil {
		a = &agg{}
		p.overflow[s] = a
	}
	a.count++
	a.bytes += bytes
}

func (p *proc) addAfter(s *site, bytes uint64) {
	if p.after == nil {
		p.after = make(map[*site]*agg)
	}
	a := p.after[s]
	if a == nil {
		a = &agg{}
		p.after[s] = a
	}
	a.count++
	a.bytes += bytes
}
