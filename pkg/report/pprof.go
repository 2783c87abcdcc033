package report

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"path"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// unknownMapping is the pprof mapping of frames in no mapped file; its addresses are runtime ones.
const unknownMapping = "[unknown]"

// noStack names the single frame of a site without a stack, so its bytes still show in graphs.
const noStack = "(no stack)"

// WritePprof writes the sites as a gzipped pprof heap profile (sample types in schema.md).
func (r *Report) WritePprof(w io.Writer) error {
	p := r.Profile()
	if err := p.CheckValid(); err != nil {
		return fmt.Errorf("report: invalid pprof profile: %w", err)
	}
	return p.Write(w)
}

// Profile converts the sites into a pprof profile: one sample per site.
func (r *Report) Profile() *profile.Profile {
	// Count mode traces no frees: it has no inuse values to give, so it gives none (pprof would
	// otherwise show "Total samples = 0" by default), and its default is what was allocated.
	full := r.Mode != "count"
	p := &profile.Profile{
		SampleType: []*profile.ValueType{
			{Type: "alloc_objects", Unit: "count"}, {Type: "alloc_space", Unit: "bytes"},
		},
		DefaultSampleType: "alloc_space",
		Comments:          []string{"udstrace: " + strings.Join(r.Command, " "), "udstrace mode: " + r.Mode},
		// As Go's heap profiles: the period is the mean bytes between samples. Values are already
		// scaled (every site's weights are unbiased), so pprof must not scale them again.
		PeriodType: &profile.ValueType{Type: "space", Unit: "bytes"},
		Period:     max(int64(min(r.SampleBytes, math.MaxInt64)), 1),
	}
	if full {
		p.SampleType = append(p.SampleType, &profile.ValueType{Type: "inuse_objects", Unit: "count"},
			&profile.ValueType{Type: "inuse_space", Unit: "bytes"})
		p.DefaultSampleType = "inuse_space"
	}
	if r.SampleBytes > 0 {
		p.Comments = append(p.Comments, fmt.Sprintf("udstrace sampled: a stack about every %d bytes; values are estimates, per-process totals exact", r.SampleBytes))
	}
	if !r.Start.IsZero() {
		p.TimeNanos = r.Start.UnixNano()
		p.DurationNanos = int64(r.DurationSeconds * 1e9)
	}
	pb := &pprofBuilder{p: p, maps: map[[2]string]*profile.Mapping{}, locs: map[locKey]*profile.Location{},
		funcs: map[[2]string]*profile.Function{}}
	sites := r.ShownSites()
	for i := range sites {
		s := &sites[i]
		smp := &profile.Sample{
			Value:    []int64{clampInt64(s.Count), clampInt64(s.Bytes)},
			Label:    map[string][]string{"comm": {s.Comm}, "kind": {s.Kind}},
			NumLabel: map[string][]int64{"pid": {int64(s.PID)}, "site": {int64(s.ID)}},
		}
		if full {
			smp.Value = append(smp.Value, clampInt64(s.OutstandingCount), clampInt64(s.OutstandingBytes))
		}
		if s.Thread != "" { // one thread made every call
			smp.Label["thread"] = []string{s.Thread}
			smp.NumLabel["tid"] = []int64{int64(s.TID)}
		}
		if s.FileBacked {
			smp.Label["file_backed"] = []string{"true"}
		}
		for st := s.Stack; len(st) > 0; {
			n := 1 // one raw frame (or one put back after a tail call): its inlined entries and the function they were inlined into
			for n < len(st) && st[n].Frame == st[0].Frame && st[n-1].Inlined {
				n++
			}
			smp.Location = append(smp.Location, pb.location(st[:n]))
			st = st[n:]
		}
		if len(smp.Location) == 0 {
			smp.Location = append(smp.Location, pb.location([]StackFrame{{Symbol: noStack}}))
		}
		p.Sample = append(p.Sample, smp)
	}
	r.addKernelSamples(pb, full)
	// pprof names the profile after the first mapping: put the executables before the libraries.
	slices.SortStableFunc(p.Mapping, func(a, b *profile.Mapping) int { return cmp.Compare(mappingRank(a.File), mappingRank(b.File)) })
	for i, m := range p.Mapping {
		m.ID = uint64(i + 1)
		m.Limit = max(m.Limit, 1) // file offsets run from Start 0 up to the largest one seen
	}
	return p
}

// locKey identifies a raw frame as the report does: module file and offset, or the address outside
// files; a frame put back after a tail call is its own location even where its address is another's.
type locKey struct {
	mod, buildID string
	off          uint64
	tail         bool
}

type pprofBuilder struct {
	p     *profile.Profile
	maps  map[[2]string]*profile.Mapping // module, build id
	locs  map[locKey]*profile.Location
	funcs map[[2]string]*profile.Function // name, file
}

// location returns the Location of one raw frame; fs lists its inlined frames first, as pprof's Line does.
func (b *pprofBuilder) location(fs []StackFrame) *profile.Location {
	f0 := &fs[0]
	k := locKey{f0.Module, f0.BuildID, uint64(f0.FileOffset), f0.TailCall}
	if f0.Module == "" {
		k.off = uint64(f0.Addr)
	}
	if l := b.locs[k]; l != nil {
		return l
	}
	// Addresses are file offsets in a mapping placed at 0: the same code in two processes is one location.
	l := &profile.Location{ID: uint64(len(b.p.Location) + 1), Address: k.off}
	l.Mapping = b.mapping(f0, k.off)
	for i := range fs {
		l.Line = append(l.Line, profile.Line{Function: b.function(&fs[i]), Line: int64(fs[i].Line)})
		if m := l.Mapping; m != nil && (fs[i].File == "" || fs[i].Line <= 0) {
			m.HasFilenames, m.HasLineNumbers = false, false // these flags claim it for every location
		}
	}
	b.locs[k] = l
	b.p.Location = append(b.p.Location, l)
	return l
}

func (b *pprofBuilder) mapping(f *StackFrame, off uint64) *profile.Mapping {
	k := [2]string{f.Module, f.BuildID}
	m := b.maps[k]
	if m == nil {
		// HasFunctions stops pprof from re-symbolizing with file offsets it would take for addresses.
		m = &profile.Mapping{ID: uint64(len(b.p.Mapping) + 1), File: f.Module, BuildID: f.BuildID,
			HasFunctions: true, HasFilenames: true, HasLineNumbers: true, HasInlineFrames: true}
		if f.Module == "" {
			// Frames in no file (JIT code, or no stack at all) still get a mapping, as pprof's
			// tools expect of every location: one pseudo-file of runtime addresses.
			m.File = unknownMapping
		}
		b.maps[k] = m
		b.p.Mapping = append(b.p.Mapping, m)
	}
	if off < math.MaxUint64 {
		m.Limit = max(m.Limit, off+1)
	}
	return m
}

func (b *pprofBuilder) function(f *StackFrame) *profile.Function {
	name := frameName(f)
	k := [2]string{name, f.File}
	fn := b.funcs[k]
	if fn == nil {
		fn = &profile.Function{ID: uint64(len(b.p.Function) + 1), Name: name, SystemName: name, Filename: f.File}
		b.funcs[k] = fn
		b.p.Function = append(b.p.Function, fn)
	}
	return fn
}

// mappingRank orders mappings: executables, then shared libraries, then the pseudo-files of unknown
// and kernel frames.
func mappingRank(file string) int {
	if file == unknownMapping || strings.HasPrefix(file, kernelMappingPrefix) {
		return 2
	}
	if b := path.Base(file); strings.HasSuffix(b, ".so") || strings.Contains(b, ".so.") {
		return 1
	}
	return 0
}

func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
