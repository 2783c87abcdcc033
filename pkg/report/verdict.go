package report

import (
	"cmp"
	"fmt"
	"path"
	"slices"
	"strings"
)

// socketFuncs are the socket API functions; names are compared after normalizeFunc.
var socketFuncs = setOf("socket", "socketpair", "bind", "listen", "accept", "accept4", "connect",
	"read", "write", "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg",
	"close", "shutdown")

// allocFuncs are malloc's own functions and the memory syscall wrappers, skipped when naming a source.
var allocFuncs = setOf("malloc", "calloc", "realloc", "reallocarray", "free", "posix_memalign",
	"aligned_alloc", "memalign", "valloc", "pvalloc", "sysmalloc", "mid_memalign", "ptmalloc_init",
	"malloc_consolidate", "default_morecore", "morecore", "sbrk", "brk", "mmap", "mmap64", "munmap",
	"mremap", "new_heap", "alloc_new_heap", "grow_heap", "sysmalloc_mmap")

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// normalizeFunc maps glibc's aliases (__libc_read, __GI___read_nocancel, read@@GLIBC_2.2.5) to the API name.
func normalizeFunc(name string) string {
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	name = strings.TrimSuffix(name, "_nocancel")
	for {
		n := strings.TrimLeft(name, "_")
		n = strings.TrimPrefix(n, "libc_")
		n = strings.TrimPrefix(n, "GI_")
		if n == name {
			break
		}
		name = n
	}
	return strings.TrimSuffix(name, "_nocancel")
}

func isSocketFunc(name string) bool { return name != "" && socketFuncs[normalizeFunc(name)] }

func isAllocFunc(name string) bool {
	n := normalizeFunc(name)
	return allocFuncs[n] || strings.HasPrefix(n, "int_") || strings.HasPrefix(n, "tcache") || strings.HasPrefix(n, "malloc_")
}

// isLibc reports whether a module is the C library or the dynamic loader (the system runtime, not the program).
func isLibc(module string) bool {
	b := path.Base(module)
	return strings.HasPrefix(b, "libc.so") || strings.HasPrefix(b, "libc-") || strings.HasPrefix(b, "ld-linux") ||
		(strings.HasPrefix(b, "ld-") && strings.Contains(b, ".so"))
}

// socketFrame returns the first socket API function on a stack, skipping the allocator's own frame 0.
func socketFrame(st []StackFrame) string {
	for _, f := range st {
		if f.Frame > 0 && isSocketFunc(f.Function) {
			return f.Function
		}
	}
	return ""
}

// resolved reports whether any caller frame got a function name: otherwise a socket call cannot be ruled out.
func resolved(st []StackFrame) bool {
	for _, f := range st {
		if f.Frame > 0 && f.Function != "" {
			return true
		}
	}
	return false
}

func frameName(f *StackFrame) string {
	if f.Function != "" {
		return f.Function
	}
	return f.Symbol
}

// source names where an allocation came from: first frame outside the allocator, the libc entry point, the program's caller.
func source(st []StackFrame) (function, entry, caller string) {
	fi := -1
	for i := range st {
		if st[i].Frame > 0 && (st[i].Function == "" || !isAllocFunc(st[i].Function)) {
			fi = i
			break
		}
	}
	if fi < 0 {
		if len(st) > 0 {
			return frameName(&st[0]), "", ""
		}
		return "(no stack)", "", ""
	}
	function = frameName(&st[fi])
	if !isLibc(st[fi].Module) {
		return function, "", function // the program called the allocator itself
	}
	entry = function
	for j := fi + 1; j < len(st); j++ {
		if isLibc(st[j].Module) {
			if st[j].Function != "" {
				entry = st[j].Function
			}
			continue
		}
		caller = frameName(&st[j])
		break
	}
	return function, entry, caller
}

// considered picks the processes the verdict is about: the workload's, else those that made socket syscalls.
func considered(procs []*proc, roles map[uint32]Role) []*proc {
	byRole := false
	for _, r := range roles {
		byRole = byRole || r != ""
	}
	var out []*proc
	for _, p := range procs {
		if (byRole && roles[p.pid] != "") || (!byRole && p.sock.Total() > 0) {
			out = append(out, p)
		}
	}
	order := map[Role]int{RoleServer: 0, RoleClientRaw: 1, RoleClientStdio: 2}
	rank := func(p *proc) int {
		if r, ok := order[roles[p.pid]]; ok {
			return r
		}
		return 3
	}
	slices.SortStableFunc(out, func(a, b *proc) int { return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a.pid, b.pid)) })
	return out
}

// strict reports whether a role must make no allocation at all once its socket is in use.
func strict(r Role) bool { return r == RoleServer || r == RoleClientRaw }

func (b *Builder) verdict(procs []*proc, roles map[uint32]Role, stackOf func(*site) []StackFrame, lost uint64) SocketPath {
	sp := SocketPath{UserAllocationSites: []int{}, Processes: []SocketProcess{}}
	cons := considered(procs, roles)
	bySite := make(map[*proc][]*site)
	for _, s := range b.order {
		if s.gone || s.kind.IsFree() {
			continue
		}
		bySite[s.p] = append(bySite[s.p], s)
	}
	var example string // a socket function found on an allocation stack
	for _, p := range cons {
		x := SocketProcess{
			PID: p.pid, Role: roles[p.pid], Comm: p.comm, Syscalls: p.sock.Total(),
			SyscallsByName: socketNames(p.sock), AfterIsUpperBound: p.afterApprox, Sources: []Source{},
		}
		for _, s := range bySite[p] {
			st := stackOf(s)
			if fn := socketFrame(st); fn != "" {
				x.UserAllocations += s.count
				sp.UserBytes += s.bytes
				sp.UserAllocationSites = append(sp.UserAllocationSites, s.id)
				example = cmp.Or(example, fn)
			} else if !resolved(st) {
				x.UnresolvedAllocations += s.count
			}
		}
		for s, a := range p.after {
			x.AllocsAfterFirstCall += a.count
			x.BytesAfterFirstCall += a.bytes
			fn, entry, caller := source(stackOf(s))
			x.Sources = append(x.Sources, Source{Site: s.id, Kind: s.kind.String(), Count: a.count, Bytes: a.bytes,
				Function: fn, Entry: entry, Caller: caller})
		}
		slices.SortFunc(x.Sources, func(a, b Source) int {
			return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(b.Count, a.Count), cmp.Compare(a.Site, b.Site))
		})
		sp.Syscalls += x.Syscalls
		sp.UserAllocations += x.UserAllocations
		sp.UnresolvedAllocations += x.UnresolvedAllocations
		sp.Processes = append(sp.Processes, x)
	}
	slices.Sort(sp.UserAllocationSites)
	if sp.Applies = len(roles) > 0 || sp.Syscalls > 0; !sp.Applies {
		return sp // no socket path was exercised: a verdict would be noise
	}

	reason := ""
	switch {
	case sp.Syscalls == 0:
		reason = "no AF_UNIX socket syscall was observed, so the socket path was not exercised"
	case sp.UserAllocations > 0:
		reason = fmt.Sprintf("%s (%s) had a socket call (%s) on their stack, at %s",
			plural(sp.UserAllocations, "allocation"), bytesText(sp.UserBytes), example, siteList(sp.UserAllocationSites))
	}
	for _, x := range sp.Processes {
		if reason != "" || !strict(x.Role) {
			continue
		}
		who := fmt.Sprintf("the %s (pid %d)", roleText(x.Role), x.PID)
		if x.Syscalls == 0 {
			reason = who + " made no socket syscall"
		} else if x.AllocsAfterFirstCall > 0 {
			reason = fmt.Sprintf("%s made %s (%s) after its first socket call, from %s",
				who, plural(x.AllocsAfterFirstCall, "allocation"), bytesText(x.BytesAfterFirstCall), sourceNames(x.Sources))
		}
	}
	sp.Holds = reason == ""
	if !sp.Holds {
		sp.Reason = strings.ToUpper(reason[:1]) + reason[1:] + "."
		sp.Conclusion = "Conclusion: NOT shown that the AF_UNIX socket path allocates nothing in user space: " + reason + "."
		return sp
	}
	sp.Conclusion = conclusion(sp, lost)
	return sp
}

// conclusion is the one quotable line, built from the figures.
func conclusion(sp SocketPath, lost uint64) string {
	var strictCalls, n uint64
	whoCount := map[Role]int{}
	var rest []SocketProcess
	for _, x := range sp.Processes {
		if strict(x.Role) {
			strictCalls += x.Syscalls
			whoCount[x.Role]++
			n++
		} else {
			rest = append(rest, x)
		}
	}
	var b strings.Builder
	b.WriteString("Conclusion: the AF_UNIX socket path allocated nothing in user space: ")
	if n > 0 {
		var who []string
		for _, r := range []Role{RoleServer, RoleClientRaw} {
			switch c := whoCount[r]; {
			case c == 1:
				who = append(who, roleText(r))
			case c > 1:
				who = append(who, fmt.Sprintf("%d %ss", c, roleText(r)))
			}
		}
		fmt.Fprintf(&b, "%s made 0 allocations across %s", joinAnd(who), plural(strictCalls, "socket syscall"))
	}
	if len(rest) > 0 {
		var allocs, bytes, calls uint64
		var srcs []Source
		roleSet := map[Role]bool{}
		for _, x := range rest {
			allocs += x.AllocsAfterFirstCall
			bytes += x.BytesAfterFirstCall
			calls += x.Syscalls
			srcs = append(srcs, x.Sources...)
			roleSet[x.Role] = true
		}
		who := "the processes'"
		if len(roleSet) == 1 && rest[0].Role != "" {
			who = "the " + roleText(rest[0].Role) + "'s"
			if len(rest) > 1 {
				who = "the " + roleText(rest[0].Role) + "s'"
			}
		}
		if n > 0 {
			b.WriteString("; ")
		} else {
			fmt.Fprintf(&b, "no allocation passed through a socket call across %s; ", plural(calls, "socket syscall"))
		}
		if allocs == 0 {
			fmt.Fprintf(&b, "%s made 0 allocations after the first socket call", strings.TrimSuffix(strings.TrimSuffix(who, "'s"), "'"))
		} else {
			fmt.Fprintf(&b, "%s %s (%s) came from %s, none from socket calls", who, plural(allocs, "allocation"), bytesText(bytes), sourceNames(srcs))
		}
	}
	if sp.UnresolvedAllocations > 0 {
		fmt.Fprintf(&b, " (%s had no symbolized caller)", plural(sp.UnresolvedAllocations, "allocation"))
	}
	if lost > 0 {
		fmt.Fprintf(&b, "; but %s were lost, so some allocations may be missing", plural(lost, "event"))
	}
	b.WriteString(".")
	return b.String()
}

func roleText(r Role) string {
	switch r {
	case RoleServer:
		return "server"
	case RoleClientRaw:
		return "raw client"
	case RoleClientStdio:
		return "stdio client"
	case "":
		return "process"
	}
	return string(r)
}

// describe gives well-known glibc sources a reader-friendly name.
func describe(fn string) string {
	switch fn {
	case "fdopen", "_IO_new_fdopen", "_IO_fdopen", "fdopen64":
		return "fdopen"
	case "_IO_file_doallocate", "_IO_new_file_doallocate":
		return "the stdio buffer (_IO_file_doallocate)"
	}
	return fn
}

// sourceNames lists the distinct sources in the order their sites first appeared.
func sourceNames(srcs []Source) string {
	srcs = slices.Clone(srcs)
	slices.SortFunc(srcs, func(a, b Source) int { return cmp.Compare(a.Site, b.Site) })
	var names []string
	seen := map[string]bool{}
	for _, s := range srcs {
		d := describe(s.Function)
		if !seen[d] {
			seen[d] = true
			names = append(names, d)
		}
	}
	if len(names) > 4 {
		names = append(names[:4], fmt.Sprintf("%d more", len(names)-4))
	}
	if len(names) == 0 {
		return "nowhere"
	}
	return joinAnd(names)
}

func joinAnd(s []string) string {
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

func siteList(ids []int) string {
	var parts []string
	for i, id := range ids {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("%d more", len(ids)-3))
			break
		}
		parts = append(parts, fmt.Sprintf("#%d", id))
	}
	if len(ids) == 1 {
		return "site " + parts[0]
	}
	return "sites " + joinAnd(parts)
}

func plural(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	if strings.HasSuffix(what, "s") {
		return commas(n) + " " + what + "es"
	}
	return commas(n) + " " + what + "s"
}

func bytesText(n uint64) string { return commas(n) + " B" }

// commas formats n with thousands separators.
func commas(n uint64) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
