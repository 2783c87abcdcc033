package report

import (
	"cmp"
	"fmt"
	"path"
	"slices"

	"github.com/udstrace/udstrace/pkg/event"
)

// Site folding keeps a report bounded by call sites as --max-procs bounds it by processes: a
// system-wide trace of compiles meets tens of thousands of distinct stacks (29,394 in 60 s of
// gcc and go build, 278 MB of JSON), and each costs its symbolized frames. Past Options.MaxSites,
// the coldest sites (fewest bytes, then fewest calls) of each process are folded, in Finish, into
// one entry per process, kind and module (the first module below the allocator's on the stack):
// every total stays exact, only the stacks of cold sites are not shown. Every output format reads
// the folded model.

// foldKey is one folded entry: a process's cold sites of one kind called from one module.
type foldKey struct {
	p      *proc
	kind   event.Kind
	module string // frameModKey of the caller's module; "": no stack
}

// foldPlan is which sites are folded and into which entries.
type foldPlan struct {
	into    map[*site]foldKey
	keys    []foldKey         // in order of first cold site
	modules map[string]string // module key -> its path, for the entry's frame
	sites   int               // sites before folding
}

// planFold picks the sites past max: all but the hottest, leaving room for the folded entries
// themselves, so that sites ≤ max unless there are more (process, kind, module) entries than max.
func (b *Builder) planFold(limit int) *foldPlan {
	var all []*site
	for _, s := range b.order {
		if !s.gone && !s.kind.IsFree() {
			all = append(all, s)
		}
	}
	if limit <= 0 || len(all) <= limit {
		return nil
	}
	slices.SortFunc(all, func(x, y *site) int {
		return cmp.Or(cmp.Compare(y.bytes, x.bytes), cmp.Compare(y.count, x.count), cmp.Compare(x.id, y.id))
	})
	fp := &foldPlan{modules: map[string]string{}, sites: len(all)}
	keyOf := make(map[*site]foldKey, len(all))
	key := func(s *site) foldKey {
		k, ok := keyOf[s]
		if !ok {
			mod, modPath := callerModule(b.frames(s.stack))
			k = foldKey{s.p, s.kind, mod}
			keyOf[s] = k
			fp.modules[mod] = modPath
		}
		return k
	}
	kept := limit - 1
	for {
		groups := map[foldKey]bool{}
		for _, s := range all[kept:] {
			groups[key(s)] = true
		}
		if kept+len(groups) <= limit || kept == 0 {
			break
		}
		kept = max(0, limit-len(groups))
	}
	fp.into = make(map[*site]foldKey, len(all)-kept)
	seen := map[foldKey]bool{}
	for _, s := range all[kept:] {
		k := key(s)
		fp.into[s] = k
		if !seen[k] {
			seen[k] = true
			fp.keys = append(fp.keys, k)
		}
	}
	return fp
}

// cold reports whether s is folded (a nil plan folds nothing).
func (fp *foldPlan) cold(s *site) bool {
	if fp == nil {
		return false
	}
	_, ok := fp.into[s]
	return ok
}

// callerModule is the module a site's allocation was called from: the first frame's module that
// is not the allocator's (frame 0), else the allocator's own; "" without frames.
func callerModule(frames []event.Frame) (key, modPath string) {
	if len(frames) == 0 {
		return "", ""
	}
	alloc := frameModKey(&frames[0])
	for i := range frames[1:] {
		f := &frames[i+1]
		if k := frameModKey(f); k != alloc && f.Module != "" {
			return k, f.Module
		}
	}
	return alloc, frames[0].Module
}

// folded builds the folded entries, ids after every real site's, with ages from the blocks' ages.
func (fp *foldPlan) folded(lastID int, ages []siteAges, now uint64) []Site {
	type acc struct {
		s   Site
		age siteAges
	}
	byKey := make(map[foldKey]*acc, len(fp.keys))
	for i, k := range fp.keys {
		mod := fp.modules[k.module]
		name := "(no stack)"
		if mod != "" {
			name = path.Base(mod)
		}
		byKey[k] = &acc{s: Site{ID: lastID + i + 1, PID: k.p.pid, Comm: k.p.comm, Kind: k.kind.String(),
			Stack: []StackFrame{{Module: mod, Symbol: name + " (colder call sites folded)"}}}}
	}
	for s, k := range fp.into {
		a := byKey[k]
		a.s.FoldedSites++
		a.s.Count += s.count
		a.s.Failed += s.failed
		a.s.Bytes += s.bytes
		a.s.OutstandingCount += s.outCount
		a.s.OutstandingBytes += s.outBytes
		if x := ages[s.pos]; x.any {
			if !a.age.any || x.oldest < a.age.oldest {
				a.age.oldest, a.age.any = x.oldest, true
			}
			a.age.older.Count += x.older.Count
			a.age.older.Bytes += x.older.Bytes
		}
	}
	out := make([]Site, 0, len(fp.keys))
	for _, k := range fp.keys {
		a := byKey[k]
		if a.age.any {
			a.s.OldestOutstandingAgeSeconds = float64(age(now, a.age.oldest)) / 1e9
			a.s.OutstandingOlderThanMinAge = a.age.older
		}
		out = append(out, a.s)
	}
	return out
}

// warning says what was folded and that the totals are exact.
func (fp *foldPlan) warning(limit int) string {
	entries := fmt.Sprintf("%d entries", len(fp.keys))
	if len(fp.keys) == 1 {
		entries = "1 entry"
	}
	return fmt.Sprintf("%s of %s, the coldest past --max-sites %d, were folded into %s, one per process, kind and calling module (folded_sites): every total is exact, their stacks are not shown",
		commas(uint64(len(fp.into))), plural(uint64(fp.sites), "call site"), limit, entries)
}
