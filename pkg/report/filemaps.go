package report

import (
	"cmp"
	"slices"

	"github.com/udstrace/udstrace/pkg/event"
)

// A file-backed mapping is not an allocation in the sense people mean: `true` maps 3.8 MB of
// libc and ld.so and allocates almost nothing. Mappings of files are counted apart from the
// anonymous memory (heap calls, anonymous mmap and mremap, brk) that allocations are: their
// sites are marked file_backed and left out of the default views (text, pprof, folded, top,
// intervals; Report.IncludeFileMaps brings them back), and the report lists them by file.

// mapAnonymous and mapFixed are MAP_ANONYMOUS and MAP_FIXED in an mmap event's flags (their low 32 bits).
const (
	mapAnonymous = 0x20
	mapFixed     = 0x10
)

// isFileMap reports whether an mmap maps a file.
func isFileMap(ev *event.Alloc) bool { return ev.FD >= 0 && uint32(ev.Flags)&mapAnonymous == 0 }

// mapCall counts an mmap or mremap at its site: as an allocation, or as a file mapping.
func (b *Builder) mapCall(p *proc, ev *event.Alloc, file bool) *site {
	if !file {
		return b.call(p, ev)
	}
	s := b.siteOf(p, ev.Kind, ev.StackID, true)
	s.add(ev)
	p.fileCalls++
	p.fileBytes += ev.Size
	return s
}

// MapFile names the file a process mapped at addr (its mapping event comes after the mmap's).
func (b *Builder) MapFile(pid uint32, addr uint64, name string) {
	p := b.cur[pid]
	if p == nil {
		return
	}
	blk, ok := p.regions[addr]
	if !ok || blk.s == nil || !blk.s.file {
		return // the mmap was not seen (lost, or before tracing)
	}
	owner := blk.s.p // in a shared address space, the process whose call mapped it
	owner.nameRegion(addr, name)
	owner.fileAgg(name).add(1, blk.size, 0)
}

// fileAgg is what a process mapped of one file: maps, bytes, and (in a folded group) the bytes
// its exited processes kept mapped.
type fileAgg struct{ maps, bytes, out uint64 }

func (a *fileAgg) add(maps, bytes, out uint64) {
	a.maps += maps
	a.bytes += bytes
	a.out += out
}

func (p *proc) fileAgg(name string) *fileAgg {
	if p.files == nil {
		p.files = map[string]*fileAgg{}
	}
	a := p.files[name]
	if a == nil {
		a = &fileAgg{}
		p.files[name] = a
	}
	return a
}

// retireFiles keeps, per file, the bytes p's image still had mapped when it went (exec or exit):
// still outstanding, as its other blocks are.
func (p *proc) retireFiles() {
	for addr, blk := range p.regions {
		if blk.s != nil && blk.s.file {
			name := cmpOr(regionName(blk, addr), unnamedFile)
			forgetRegionName(blk, addr)
			blk.s.p.fileAgg(name).add(0, 0, blk.size)
		}
	}
}

// foldFiles adds exited process p's file mappings to its group g.
func (g *proc) foldFiles(p *proc) {
	g.fileCalls += p.fileCalls
	g.fileBytes += p.fileBytes
	g.fileOut += p.fileOut
	for _, fm := range p.fileMappings() {
		g.fileAgg(fm.File).add(fm.Maps, fm.Bytes, fm.OutstandingBytes)
	}
}

// regionName is the file a region maps: the process whose call mapped it keeps the name.
func regionName(blk block, addr uint64) string {
	if blk.s == nil {
		return ""
	}
	return blk.s.p.regionNames[addr]
}

func forgetRegionName(blk block, addr uint64) {
	if blk.s != nil {
		delete(blk.s.p.regionNames, addr)
	}
}

func (p *proc) nameRegion(addr uint64, name string) {
	if p.regionNames == nil {
		p.regionNames = map[uint64]string{}
	}
	p.regionNames[addr] = name
}

// unnamedFile stands for file mappings whose mapping event was not seen.
const unnamedFile = "(file not named)"

// fileMappings lists p's mappings by file, most bytes first: maps, bytes and bytes still mapped.
func (p *proc) fileMappings() []FileMapping {
	if p.fileCalls == 0 {
		return nil
	}
	byName := map[string]*FileMapping{}
	var named fileAgg
	for name, a := range p.files {
		byName[name] = &FileMapping{PID: p.pid, Comm: p.comm, File: name, Maps: a.maps, Bytes: a.bytes, OutstandingBytes: a.out}
		named.add(a.maps, a.bytes, 0)
	}
	if p.fileCalls > named.maps { // calls whose mapping event was not seen
		fm := byName[unnamedFile] // may hold what such mappings kept mapped when their image went
		if fm == nil {
			fm = &FileMapping{PID: p.pid, Comm: p.comm, File: unnamedFile}
			byName[unnamedFile] = fm
		}
		fm.Maps += p.fileCalls - named.maps
		fm.Bytes += p.fileBytes - min(named.bytes, p.fileBytes)
	}
	for addr, blk := range p.regions {
		if blk.s == nil || !blk.s.file || blk.s.p != p {
			continue // another process's mapping in a shared address space is its own
		}
		name := cmpOr(regionName(blk, addr), unnamedFile)
		if fm := byName[name]; fm != nil {
			fm.OutstandingBytes += blk.size
		}
	}
	out := make([]FileMapping, 0, len(byName))
	for _, fm := range byName {
		out = append(out, *fm)
	}
	slices.SortFunc(out, func(a, b FileMapping) int { return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.File, b.File)) })
	return out
}

// IncludeFileMaps puts file mappings' sites back into the views (--include-file-maps); JSON has
// them either way, marked file_backed.
func (r *Report) IncludeFileMaps() { r.withFileMaps = true }

// ShownSites are the sites the views show: all of them with IncludeFileMaps, else the
// allocations' (file mappings' sites left out).
func (r *Report) ShownSites() []Site {
	if r.withFileMaps {
		return r.Sites
	}
	out := make([]Site, 0, len(r.Sites))
	for i := range r.Sites {
		if !r.Sites[i].FileBacked {
			out = append(out, r.Sites[i])
		}
	}
	return out
}
