package serve

import (
	"testing"

	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/udstrace/udstrace/pkg/report"
)

func TestOTLPURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:4318":                   "http://127.0.0.1:4318/v1development/profiles",
		"http://collector:4318":            "http://collector:4318/v1development/profiles",
		"https://c.example:443/":           "https://c.example:443/v1development/profiles",
		"http://gw:8080/custom/v1/profile": "http://gw:8080/custom/v1/profile",
	} {
		if got, err := OTLPURL(in); err != nil || got != want {
			t.Errorf("OTLPURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://x:1", "http://", "://"} {
		if _, err := OTLPURL(bad); err == nil {
			t.Errorf("OTLPURL(%q) accepted", bad)
		}
	}
}

// One resource per process with its attributes; one profile per sample type whose values add up
// to the pprof profile's; stacks and strings through the shared dictionary, whose tables start
// with their zero entries; the request survives the protobuf round trip.
func TestOTLPProfiles(t *testing.T) {
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=node-7,k8s.node.name=node%2D7, bad ,=x")
	main := []report.StackFrame{{Frame: 0, Symbol: "malloc", Function: "malloc", Module: "/lib/libc.so.6", FileOffset: 0x10},
		{Frame: 1, Symbol: "main", Function: "main", Module: "/bin/app", FileOffset: 0x20}}
	r := &report.Report{Mode: "full",
		Processes: []report.Process{{PID: 5, Comm: "app", Exe: "/bin/app", ContainerID: "c1", PodUID: "u1"}, {PID: 6, Comm: "sh"}},
		Sites: []report.Site{
			{ID: 1, PID: 5, Comm: "app", Kind: "malloc", Count: 3, Bytes: 300, OutstandingCount: 1, OutstandingBytes: 100, Stack: main},
			{ID: 2, PID: 5, Comm: "app", Kind: "calloc", Count: 1, Bytes: 40, Stack: main},
			{ID: 3, PID: 6, Comm: "sh", Kind: "malloc", Count: 2, Bytes: 16, Stack: main[:1]},
		}}
	pd := OTLPProfiles(r.Profile(), r)
	b, err := (&pprofile.ProtoMarshaler{}).MarshalProfiles(pd)
	if err != nil {
		t.Fatal(err)
	}
	pd, err = (&pprofile.ProtoUnmarshaler{}).UnmarshalProfiles(b)
	if err != nil {
		t.Fatal(err)
	}
	d := pd.Dictionary()
	if d.StringTable().At(0) != "" || d.LocationTable().Len() != 3 || d.StackTable().Len() != 3 {
		t.Errorf("dictionary: string 0 %q, %d locations, %d stacks; want \"\", 3 (zero + 2), 3 (zero + 2)", d.StringTable().At(0), d.LocationTable().Len(), d.StackTable().Len())
	}
	if pd.ResourceProfiles().Len() != 2 {
		t.Fatalf("%d resources, want one per process", pd.ResourceProfiles().Len())
	}
	want := map[int64]map[string]int64{
		5: {"alloc_objects": 4, "alloc_space": 340, "inuse_objects": 1, "inuse_space": 100},
		6: {"alloc_objects": 2, "alloc_space": 16},
	}
	for _, rp := range pd.ResourceProfiles().All() {
		a := rp.Resource().Attributes().AsRaw()
		pid := a["process.pid"].(int64)
		if a["host.name"] != "node-7" || a["k8s.node.name"] != "node-7" || len(a) > 7 {
			t.Errorf("pid %d: OTEL_RESOURCE_ATTRIBUTES not applied as the SDKs do: %v", pid, a)
		}
		if pid == 5 && (a["container.id"] != "c1" || a["k8s.pod.uid"] != "u1" || a["process.executable.name"] != "app") {
			t.Errorf("pid 5 attributes %v", a)
		}
		if _, ok := a["container.id"]; pid == 6 && ok {
			t.Errorf("pid 6 has a container: %v", a)
		}
		profs := rp.ScopeProfiles().At(0).Profiles()
		if profs.Len() != 4 {
			t.Errorf("pid %d: %d profiles, want one per sample type", pid, profs.Len())
		}
		got := map[string]int64{}
		for _, p := range profs.All() {
			typ := d.StringTable().At(int(p.SampleType().TypeStrindex()))
			for _, s := range p.Samples().All() {
				got[typ] += s.Values().At(0)
				st := d.StackTable().At(int(s.StackIndex()))
				if st.LocationIndices().Len() == 0 {
					t.Errorf("pid %d: a sample without a stack", pid)
				}
			}
		}
		for k, v := range want[pid] {
			if got[k] != v {
				t.Errorf("pid %d %s = %d, want %d", pid, k, got[k], v)
			}
		}
	}
}
