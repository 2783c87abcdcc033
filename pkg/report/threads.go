package report

// A process is named by its thread-group leader; a site says which thread made its calls when
// they all came from one (its tid and that thread's latest name), else how many threads did.
// Sites are not split by thread: a thread pool's calls from one stack stay one site.

// rename records thread tid's new name; the leader's (tid == pid) is the process's.
func (p *proc) rename(tid uint32, name string) {
	if tid == p.pid || tid == 0 {
		p.comm = name
		return
	}
	if p.threads == nil {
		p.threads = make(map[uint32]string)
	}
	p.threads[tid] = name
}

// threadName is thread tid's latest known name: the leader's unless the thread was told otherwise.
func (p *proc) threadName(tid uint32) string {
	if n, ok := p.threads[tid]; ok {
		return n
	}
	return p.comm
}

// thread notes that thread tid made a call at s; tid 0 (not known) is not a thread. The set of
// threads is made only when a second one calls: most sites are called by one. Once there is a
// set, s.tid is the last thread seen, so a thread's run of calls costs one comparison.
func (s *site) thread(tid uint32) {
	switch {
	case tid == 0 || tid == s.tid:
	case s.threads != nil:
		s.threads[tid] = struct{}{}
	case s.tid == 0:
	default:
		s.threads = map[uint32]struct{}{s.tid: {}, tid: {}}
	}
	if tid != 0 {
		s.tid = tid
	}
}

// threadFields are a site's JSON thread fields: tid and thread name for a site one thread
// called, the count of threads in any case (0: not known).
func (s *site) threadFields() (tid uint32, name string, n int) {
	switch {
	case s.threads != nil:
		return 0, "", len(s.threads)
	case s.tid != 0:
		return s.tid, s.p.threadName(s.tid), 1
	}
	return 0, "", 0
}
