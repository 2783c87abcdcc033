package report

import "github.com/udstrace/udstrace/pkg/event"

// A frame's identity is (module key, file offset), or its address when it is in no file:
// the same code reached through another mapping address is the same site.

func frameModKey(f *event.Frame) string {
	if f.ModuleKey != "" {
		return f.ModuleKey
	}
	return f.Module
}

func sameFrame(a, b *event.Frame) bool {
	if a.Module == "" || b.Module == "" {
		return a.Module == b.Module && a.Addr == b.Addr
	}
	return a.FileOffset == b.FileOffset && frameModKey(a) == frameModKey(b)
}

func sameStack(a, b []event.Frame) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameFrame(&a[i], &b[i]) {
			return false
		}
	}
	return true
}

// stackHash needs no string hashing: offsets and key lengths spread sites well, and site() checks equality anyway.
func stackHash(p *proc, kind event.Kind, stack []event.Frame) uint64 {
	const m = 0x9e3779b97f4a7c15
	h := (uint64(p.idx)<<8 | uint64(kind)) * m
	for i := range stack {
		f := &stack[i]
		v := f.Addr | 1<<63
		if f.Module != "" {
			v = f.FileOffset ^ uint64(len(frameModKey(f)))<<48
		}
		h = (h ^ v) * m
		h ^= h >> 29
	}
	return h
}

// site finds or creates the site of (p, kind, stack).
func (b *Builder) site(p *proc, kind event.Kind, stack []event.Frame) *site {
	h := stackHash(p, kind, stack)
	head := b.sites[h]
	for s := head; s != nil; s = s.next {
		if s.p == p && s.kind == kind && sameStack(s.stack, stack) {
			return s
		}
	}
	b.lastID++
	s := &site{id: b.lastID, p: p, kind: kind, hash: h, next: head, stack: stack, pos: len(b.order)}
	b.sites[h] = s
	b.order = append(b.order, s)
	p.sites = append(p.sites, s)
	return s
}
