package serve

import (
	"cmp"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/google/pprof/profile"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/udstrace/udstrace/pkg/report"
)

// otlpDict fills an OTLP profiles dictionary, each table starting with its zero entry as the
// format wants, each value once (pprofile's Set* helpers search linearly: too slow for thousands).
type otlpDict struct {
	d       pprofile.ProfilesDictionary
	strs    map[string]int32
	maps    map[uint64]int32 // pprof mapping id
	funcs   map[uint64]int32 // pprof function id
	locs    map[uint64]int32 // pprof location id
	stacks  map[string]int32 // location indices, joined
	attrs   map[string]int32 // key, and the value as text
	scratch []int32
}

func newOTLPDict(d pprofile.ProfilesDictionary) *otlpDict {
	x := &otlpDict{d: d, strs: map[string]int32{}, maps: map[uint64]int32{}, funcs: map[uint64]int32{},
		locs: map[uint64]int32{}, stacks: map[string]int32{}, attrs: map[string]int32{}}
	x.str("")
	d.MappingTable().AppendEmpty()
	d.FunctionTable().AppendEmpty()
	d.LocationTable().AppendEmpty()
	d.StackTable().AppendEmpty()
	d.AttributeTable().AppendEmpty()
	return x
}

func (x *otlpDict) str(s string) int32 {
	if i, ok := x.strs[s]; ok {
		return i
	}
	i := int32(x.d.StringTable().Len())
	x.d.StringTable().Append(s)
	x.strs[s] = i
	return i
}

func (x *otlpDict) mapping(m *profile.Mapping) int32 {
	if m == nil {
		return 0
	}
	if i, ok := x.maps[m.ID]; ok {
		return i
	}
	i := int32(x.d.MappingTable().Len())
	om := x.d.MappingTable().AppendEmpty()
	om.SetMemoryStart(m.Start)
	om.SetMemoryLimit(m.Limit)
	om.SetFileOffset(m.Offset)
	om.SetFilenameStrindex(x.str(m.File))
	if m.BuildID != "" {
		om.AttributeIndices().Append(x.attr("process.executable.build_id.gnu", m.BuildID))
	}
	x.maps[m.ID] = i
	return i
}

func (x *otlpDict) function(f *profile.Function) int32 {
	if i, ok := x.funcs[f.ID]; ok {
		return i
	}
	i := int32(x.d.FunctionTable().Len())
	of := x.d.FunctionTable().AppendEmpty()
	of.SetNameStrindex(x.str(f.Name))
	of.SetSystemNameStrindex(x.str(f.SystemName))
	of.SetFilenameStrindex(x.str(f.Filename))
	of.SetStartLine(f.StartLine)
	x.funcs[f.ID] = i
	return i
}

func (x *otlpDict) location(l *profile.Location) int32 {
	if i, ok := x.locs[l.ID]; ok {
		return i
	}
	i := int32(x.d.LocationTable().Len())
	ol := x.d.LocationTable().AppendEmpty()
	ol.SetMappingIndex(x.mapping(l.Mapping))
	ol.SetAddress(l.Address)
	for _, ln := range l.Line {
		oln := ol.Lines().AppendEmpty()
		if ln.Function != nil {
			oln.SetFunctionIndex(x.function(ln.Function))
		}
		oln.SetLine(ln.Line)
		oln.SetColumn(ln.Column)
	}
	x.locs[l.ID] = i
	return i
}

func (x *otlpDict) stack(locs []*profile.Location) int32 {
	x.scratch = x.scratch[:0]
	var key []byte
	for _, l := range locs {
		i := x.location(l)
		x.scratch = append(x.scratch, i)
		key = strconv.AppendInt(append(key, ','), int64(i), 10)
	}
	if i, ok := x.stacks[string(key)]; ok {
		return i
	}
	i := int32(x.d.StackTable().Len())
	x.d.StackTable().AppendEmpty().LocationIndices().FromRaw(slices.Clone(x.scratch))
	x.stacks[string(key)] = i
	return i
}

// attr is a string or int attribute (v string or int64).
func (x *otlpDict) attr(k string, v any) int32 {
	key := k + "\x00"
	switch v := v.(type) {
	case string:
		key += "s" + v
	case int64:
		key += "i" + strconv.FormatInt(v, 10)
	}
	if i, ok := x.attrs[key]; ok {
		return i
	}
	i := int32(x.d.AttributeTable().Len())
	a := x.d.AttributeTable().AppendEmpty()
	a.SetKeyStrindex(x.str(k))
	switch v := v.(type) {
	case string:
		a.Value().SetStr(v)
	case int64:
		a.Value().SetInt(v)
	}
	x.attrs[key] = i
	return i
}

// OTLPProfiles converts p (a Report.Profile(), labelled by pid) into OTLP profiles: one resource
// per process (host.name, process.pid, process.executable.name and .path, container.id,
// k8s.pod.uid where known, and OTEL_RESOURCE_ATTRIBUTES's), and in it one profile per sample
// type (OTLP profiles carry one each), sharing one dictionary.
func OTLPProfiles(p *profile.Profile, r *report.Report) pprofile.Profiles {
	out := pprofile.NewProfiles()
	x := newOTLPDict(out.Dictionary())
	procs := map[int64]report.Process{}
	for _, pr := range r.Processes {
		if pr.FoldedProcesses == 0 {
			procs[int64(pr.PID)] = pr
		}
	}
	byPID := map[int64][]*profile.Sample{}
	for _, s := range p.Sample {
		var pid int64
		if v := s.NumLabel["pid"]; len(v) > 0 {
			pid = v[0]
		}
		byPID[pid] = append(byPID[pid], s)
	}
	pids := make([]int64, 0, len(byPID))
	for pid := range byPID {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	host, _ := os.Hostname()
	extra := envResource(os.Getenv("OTEL_RESOURCE_ATTRIBUTES"))
	for _, pid := range pids {
		samples := byPID[pid]
		rp := out.ResourceProfiles().AppendEmpty()
		ra := rp.Resource().Attributes()
		ra.PutStr("host.name", host)
		for _, kv := range extra { // the environment's word over udstrace's (a pod's hostname is not its node's)
			ra.PutStr(kv[0], kv[1])
		}
		ra.PutInt("process.pid", pid)
		pr, ok := procs[pid]
		if ok && pr.Exe != "" {
			ra.PutStr("process.executable.name", path.Base(pr.Exe))
			ra.PutStr("process.executable.path", pr.Exe)
		} else if c := samples[0].Label["comm"]; len(c) > 0 {
			ra.PutStr("process.executable.name", c[0])
		}
		if ok && pr.ContainerID != "" {
			ra.PutStr("container.id", pr.ContainerID)
		}
		if ok && pr.PodUID != "" {
			ra.PutStr("k8s.pod.uid", pr.PodUID)
		}
		sp := rp.ScopeProfiles().AppendEmpty()
		sp.Scope().SetName("udstrace")
		for ti, st := range p.SampleType {
			op := sp.Profiles().AppendEmpty()
			op.SampleType().SetTypeStrindex(x.str(st.Type))
			op.SampleType().SetUnitStrindex(x.str(st.Unit))
			if p.PeriodType != nil {
				op.PeriodType().SetTypeStrindex(x.str(p.PeriodType.Type))
				op.PeriodType().SetUnitStrindex(x.str(p.PeriodType.Unit))
			}
			op.SetPeriod(p.Period)
			op.SetTime(pcommon.Timestamp(max(p.TimeNanos, 0)))
			op.SetDurationNano(uint64(max(p.DurationNanos, 0)))
			for _, s := range samples {
				if s.Value[ti] == 0 {
					continue // nothing of this type: an OTLP sample carries one value
				}
				smp := op.Samples().AppendEmpty()
				smp.SetStackIndex(x.stack(s.Location))
				smp.Values().Append(s.Value[ti])
				for _, k := range sortedKeys(s.Label) {
					smp.AttributeIndices().Append(x.attr(k, s.Label[k][0]))
				}
				for _, k := range sortedKeys(s.NumLabel) {
					if k != "pid" { // the resource's
						smp.AttributeIndices().Append(x.attr(k, s.NumLabel[k][0]))
					}
				}
			}
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, cmp.Compare)
	return ks
}

// envResource reads OTEL_RESOURCE_ATTRIBUTES as the OpenTelemetry SDKs do: key=value pairs,
// comma-separated, values percent-encoded; malformed pairs are skipped.
func envResource(v string) [][2]string {
	var out [][2]string
	for _, pair := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			continue
		}
		if dec, err := url.PathUnescape(strings.TrimSpace(val)); err == nil {
			out = append(out, [2]string{k, dec})
		}
	}
	return out
}
