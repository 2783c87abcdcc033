package report

import "github.com/udstrace/udstrace/pkg/event"

// A site is (process, kind, stack id): stack ids name frames by module and file offset
// (pkg/kstack), so one id is one stack in every process, and frames are needed only when the
// report is made (Options.Stacks).

func stackHash(p *proc, kind event.Kind, id uint64) uint64 {
	const m = 0x9e3779b97f4a7c15
	h := (uint64(p.idx)<<8 | uint64(kind)) * m
	h = (h ^ id) * m
	return h ^ h>>29
}

// site finds or creates the site of (p, kind, stack).
func (b *Builder) site(p *proc, kind event.Kind, stack uint64) *site {
	return b.siteOf(p, kind, stack, false)
}

// siteOf is the site of a call; file tells a file mapping's site from an anonymous one's.
func (b *Builder) siteOf(p *proc, kind event.Kind, stack uint64, file bool) *site {
	h := stackHash(p, kind, stack)
	head := b.sites[h]
	for s := head; s != nil; s = s.next {
		if s.p == p && s.kind == kind && s.stack == stack && s.file == file {
			return s
		}
	}
	b.lastID++
	s := &site{id: b.lastID, p: p, kind: kind, hash: h, next: head, stack: stack, pos: len(b.order), file: file}
	b.sites[h] = s
	b.order = append(b.order, s)
	p.sites = append(p.sites, s)
	return s
}

// frames resolves a site's stack id; nil without a resolver or for id 0.
func (b *Builder) frames(id uint64) []event.Frame {
	if id == 0 || b.opts.Stacks == nil {
		return nil
	}
	return b.opts.Stacks(id)
}

// frameModKey is a frame's module identity: its key, else its path.
func frameModKey(f *event.Frame) string {
	if f.ModuleKey != "" {
		return f.ModuleKey
	}
	return f.Module
}

// lazyStacks holds a Snapshot's unexpanded stacks: site id -> stack id.
type lazyStacks struct {
	sc     *symCache
	frames func(id uint64) []event.Frame
	ids    map[int]uint64
}

// SiteStack returns s's stack, symbolizing it first in a Snapshot (whose sites come without
// stacks); s must be one of r's sites. Not safe for concurrent use.
func (r *Report) SiteStack(s *Site) []StackFrame {
	if r.lazy == nil || s.Stack != nil {
		return s.Stack
	}
	if id, ok := r.lazy.ids[s.ID]; ok {
		s.Stack = r.lazy.sc.expand(r.lazy.frames(id)) // s may be a copy (ShownSites): the symbols stay cached
	}
	return s.Stack
}
