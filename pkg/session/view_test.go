package session

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/udstrace/udstrace/pkg/report"
)

// view is the part of the JSON report the tests read: the fields dashboards rely on.
type view struct {
	Schema     string  `json:"schema"`
	LostEvents *uint64 `json:"lost_events"`
	Processes  []struct {
		PID  uint32 `json:"pid"`
		Comm string `json:"comm"`
		Exe  string `json:"exe"`
		Role string `json:"role"`
		Heap map[string]struct {
			Calls uint64 `json:"calls"`
			Bytes uint64 `json:"bytes"`
		} `json:"heap_calls_by_kind"`
	} `json:"processes"`
	Sites []struct {
		PID              uint32      `json:"pid"`
		Comm             string      `json:"comm"`
		Kind             string      `json:"kind"`
		Count            uint64      `json:"count"`
		Bytes            uint64      `json:"bytes"`
		OutstandingCount uint64      `json:"outstanding_count"`
		OutstandingBytes uint64      `json:"outstanding_bytes"`
		TID              uint32      `json:"tid"`
		Thread           string      `json:"thread"`
		Threads          int         `json:"threads"`
		FileBacked       bool        `json:"file_backed"`
		Stack            []viewFrame `json:"stack"`
	} `json:"sites"`
	SocketPath struct {
		Syscalls        uint64 `json:"syscalls"`
		UserAllocations uint64 `json:"user_allocations"`
		UserBytes       uint64 `json:"user_bytes"`
		Holds           bool   `json:"holds"`
		Reason          string `json:"reason"`
	} `json:"socket_path"`
}

type viewFrame struct {
	Symbol   string `json:"symbol"`
	Module   string `json:"module"`
	Function string `json:"function"`
	Inlined  bool   `json:"inlined"`
	TailCall bool   `json:"tail_call"`
}

func decodeView(t *testing.T, r *report.Report) (*view, string) {
	t.Helper()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var v view
	if err := json.Unmarshal(buf.Bytes(), &v); err != nil {
		t.Fatalf("decoding report: %v\n%s", err, buf.String())
	}
	if v.LostEvents == nil {
		t.Fatalf("lost_events missing from the report")
	}
	return &v, buf.String()
}

// pidOf returns the PID of the process with the given role.
func (v *view) pidOf(t *testing.T, role string) uint32 {
	t.Helper()
	for _, p := range v.Processes {
		if p.Role == role {
			return p.PID
		}
	}
	t.Fatalf("no process with role %s in the report", role)
	return 0
}

// perKind returns one process's malloc-family calls and bytes by kind.
func (v *view) perKind(pid uint32) map[string][2]uint64 {
	out := map[string][2]uint64{}
	for _, p := range v.Processes {
		if p.PID != pid {
			continue
		}
		for k, c := range p.Heap {
			out[k] = [2]uint64{c.Calls, c.Bytes}
		}
	}
	return out
}

// siteTotals sums one process's site counts and bytes by kind: it must agree with the process totals.
func (v *view) siteTotals(pid uint32) map[string][2]uint64 {
	out := map[string][2]uint64{}
	for _, s := range v.Sites {
		if s.PID != pid {
			continue
		}
		c := out[s.Kind]
		c[0] += s.Count
		c[1] += s.Bytes
		out[s.Kind] = c
	}
	return out
}
