package report

import (
	"bytes"
	"encoding/json"
)

// Count mode traces neither frees nor memory syscalls: what it does not trace is left out of its
// JSON (absent, not 0) and shown as "-" in text, so that no one reads "0 outstanding" as a fact.
// The fields left out are listed once, here (schema.md says the same).

// notTracedProcess shadows a count-mode Process's untraced fields: each, nil and omitempty,
// hides the embedded field of the same JSON name.
type notTracedProcess struct {
	plainProcess
	Frees            *uint64 `json:"frees,omitempty"`
	FreeNullCalls    *uint64 `json:"free_null_calls,omitempty"`
	UnmatchedFrees   *uint64 `json:"unmatched_frees,omitempty"`
	OutstandingCount *uint64 `json:"outstanding_count,omitempty"`
	OutstandingBytes *uint64 `json:"outstanding_bytes,omitempty"`
	MmapCalls        *uint64 `json:"mmap_calls,omitempty"`
	MmapBytes        *uint64 `json:"mmap_bytes,omitempty"`
	MremapCalls      *uint64 `json:"mremap_calls,omitempty"`
	MremapBytes      *uint64 `json:"mremap_bytes,omitempty"`
	MunmapCalls      *uint64 `json:"munmap_calls,omitempty"`
	BrkCalls         *uint64 `json:"brk_calls,omitempty"`
	BrkBytes         *uint64 `json:"brk_bytes,omitempty"`
	InsideAllocator  *uint64 `json:"inside_allocator,omitempty"`
}

type plainProcess Process

// MarshalJSON writes p, leaving out what count mode does not trace.
func (p Process) MarshalJSON() ([]byte, error) {
	if !p.notTraced {
		return marshalNoEscape(plainProcess(p))
	}
	return marshalNoEscape(notTracedProcess{plainProcess: plainProcess(p)})
}

// notTracedSite shadows a count-mode Site's untraced fields, as notTracedProcess does.
type notTracedSite struct {
	plainSite
	OutstandingCount            *uint64 `json:"outstanding_count,omitempty"`
	OutstandingBytes            *uint64 `json:"outstanding_bytes,omitempty"`
	OldestOutstandingAgeSeconds *uint64 `json:"oldest_outstanding_age_seconds,omitempty"`
	OutstandingOlderThanMinAge  *uint64 `json:"outstanding_older_than_min_age,omitempty"`
}

type plainSite Site

// MarshalJSON writes s, leaving out what count mode does not trace (appendSite does the same).
func (s Site) MarshalJSON() ([]byte, error) {
	if !s.notTraced {
		return marshalNoEscape(plainSite(s))
	}
	return marshalNoEscape(notTracedSite{plainSite: plainSite(s)})
}

// marshalNoEscape is json.Marshal without HTML escaping, as the report's encoders write.
func marshalNoEscape(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// markNotTraced marks r's processes and sites as count mode's, whose frees, outstanding blocks and
// memory syscalls were not traced.
func (r *Report) markNotTraced() {
	for i := range r.Processes {
		r.Processes[i].notTraced = true
	}
	for i := range r.Sites {
		r.Sites[i].notTraced = true
	}
}

// NotTraced reports whether the report's frees, outstanding blocks and memory syscalls were not
// traced (count mode).
func (r *Report) NotTraced() bool { return r.Mode == "count" }
