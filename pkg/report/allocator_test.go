package report

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"
)

// TestAllocatorNamed: each process names the object its malloc binds to, in JSON
// (processes[].allocator, null when none) and in the text's ALLOCATOR column.
func TestAllocatorNamed(t *testing.T) {
	meta := echoMeta()
	meta.Allocators = map[uint32]Allocator{10: {Name: "jemalloc", Object: "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}}
	r := echoReport(t, meta)
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Processes []struct {
			PID       uint32          `json:"pid"`
			Allocator json.RawMessage `json:"allocator"`
		} `json:"processes"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	got := map[uint32]string{}
	for _, p := range doc.Processes {
		var c bytes.Buffer
		_ = json.Compact(&c, p.Allocator)
		got[p.PID] = c.String()
	}
	if want := `{"name":"jemalloc","object":"/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}`; got[10] != want {
		t.Errorf("pid 10 allocator %s, want %s", got[10], want)
	}
	if got[11] != "null" {
		t.Errorf("pid 11 allocator %s, want null (none known)", got[11])
	}
	var txt bytes.Buffer
	if err := r.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^10 .*\sjemalloc$`).Match(txt.Bytes()) || !regexp.MustCompile(`(?m)^11 .*\snone$`).Match(txt.Bytes()) {
		t.Errorf("ALLOCATOR column: want jemalloc for 10 and none for 11:\n%s", txt.String())
	}
}
