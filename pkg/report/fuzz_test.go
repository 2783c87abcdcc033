package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/udstrace/udstrace/pkg/event"
)

var fuzzStacks = [][]event.Frame{nil, stMain, stHelper, stFdopen, stFgetc, stRead, stMmap, stBrk, stk(fMalloc, fAnon)}

var fuzzSizes = []uint64{0, 1, 16, 472, 4096, 1 << 20, 1 << 39, ^uint64(4095)}

// decodeEvents turns bytes into an event sequence (6 bytes per event) and counts the calls that must become site calls.
func decodeEvents(data []byte) (evs []any, counted uint64) {
	var t uint64
	for ; len(data) >= 6; data = data[6:] {
		op, pid := data[0], uint32(data[1]%4)+1
		addr, old := uint64(data[2]%8)*0x100, uint64(data[3]%8)*0x100
		size := fuzzSizes[int(data[4])%len(fuzzSizes)]
		fl := data[5]
		t += uint64(fl >> 6)
		switch op % 20 {
		case 15:
			evs = append(evs, fork(t, pid, uint32(data[2]%4)+1))
			continue
		case 16:
			evs = append(evs, execp(t, pid, "/bin/x"))
			continue
		case 17:
			evs = append(evs, exit(t, pid, int(data[3])))
			continue
		case 18, 19:
			s := event.SocketStats{PID: pid, FirstTime: t * uint64(data[2]%2)}
			s.Counts[data[3]%uint8(event.SocketCallCount)] = uint64(data[4])
			evs = append(evs, s)
			continue
		}
		k := event.Kind(op % 15)
		if (k == event.Brk && size == 1<<39) || (k != event.Brk && int64(size) < 0) {
			size = 1 << 12 // keep byte sums far from wrapping; only brk shrinks come negative
		}
		a := &event.Alloc{Time: t, PID: pid, Kind: k, Size: size, Addr: addr, OldAddr: old, OldSize: size,
			Failed: fl&1 != 0, Shrink: fl&2 != 0, StackID: sid(fuzzStacks[int(fl>>2)%len(fuzzStacks)])}
		if fl&0x20 != 0 {
			a.Inside = event.Malloc
		}
		a.FD, a.Flags = -1, 0x22 // anonymous
		if k == event.Mmap && fl&0x40 != 0 {
			a.FD, a.Flags = 3, 0x02 // a file: a mapping, counted apart from allocations
		}
		if k == event.Brk || k == event.Munmap {
			a.Addr = addr // brk has no block address; harmless
		}
		evs = append(evs, a)
		if a.Inside != event.KindNone {
			continue
		}
		switch {
		case k.IsHeap() && k != event.Free, k == event.Mmap, k == event.Mremap:
			counted++
		case k == event.Brk && !a.Shrink && size != 0 && int64(size) > 0:
			counted++
		}
	}
	return evs, counted
}

func FuzzBuilder(f *testing.F) {
	f.Add([]byte{1, 0, 1, 0, 2, 0, 5, 0, 1, 0, 0, 0})
	f.Add([]byte{3, 1, 2, 1, 3, 4, 3, 1, 3, 2, 0, 8, 5, 1, 3, 0, 0, 0, 18, 1, 1, 7, 9, 64, 1, 1, 4, 0, 2, 128})
	f.Add([]byte{11, 2, 1, 0, 5, 0, 12, 2, 1, 0, 3, 0, 13, 2, 2, 1, 5, 0, 14, 2, 0, 0, 4, 0, 14, 2, 0, 0, 7, 2})
	f.Add([]byte{1, 1, 1, 0, 2, 0, 15, 1, 2, 0, 0, 0, 5, 2, 1, 0, 0, 0, 17, 1, 0, 0, 0, 64, 1, 1, 2, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		evs, counted := decodeEvents(data)
		b := NewBuilder(testOpts(Options{MaxTimeline: 3, TopSites: 2}))
		var sym Symbolizer
		if len(data)%2 == 0 {
			sym = &fakeSym{}
		}
		meta := Meta{Roles: map[uint32]Role{1: RoleServer, 2: RoleClientStdio}}
		iv := NewIntervals(1 << 30)
		feed(t, b, evs[:len(evs)/2]...)
		i1 := iv.Next(b.Finish(sym, meta), time.Unix(1, 0))
		feed(t, b, evs[len(evs)/2:]...)
		r := b.Finish(sym, meta)
		checkIntervals(t, r, i1, iv.Next(r, time.Unix(2, 0)))
		checkExports(t, r)

		var sum uint64
		perPid := map[uint32][2]uint64{}
		fileOut, procFileOut, byFile := map[uint32]uint64{}, map[uint32]uint64{}, map[uint32]uint64{}
		for _, s := range r.Sites {
			sum += s.Count
			if s.OutstandingCount > s.Count-s.Failed || s.OutstandingBytes > s.Bytes {
				t.Fatalf("site %d: outstanding %d/%d exceeds calls %d-%d / bytes %d", s.ID, s.OutstandingCount, s.OutstandingBytes, s.Count, s.Failed, s.Bytes)
			}
			if s.OutstandingOlderThanMinAge != (BlockCount{s.OutstandingCount, s.OutstandingBytes}) {
				t.Fatalf("site %d: with min age 0, older %+v != outstanding %d/%d", s.ID, s.OutstandingOlderThanMinAge, s.OutstandingCount, s.OutstandingBytes)
			}
			if s.FileBacked { // a mapping: the process counts it apart
				fileOut[s.PID] += s.OutstandingBytes
				continue
			}
			x := perPid[s.PID]
			perPid[s.PID] = [2]uint64{x[0] + s.OutstandingCount, x[1] + s.OutstandingBytes}
		}
		if sum != counted {
			t.Fatalf("site counts %d, want %d counted calls", sum, counted)
		}
		var allocs uint64
		outs := map[uint32][2]uint64{}
		for _, p := range r.Processes {
			allocs += p.Allocations + p.MappedFileCalls
			procFileOut[p.PID] += p.MappedFileOutstandingBytes // a reused pid: its processes together
			if p.OutstandingCount > p.Allocations || p.OutstandingBytes > p.AllocatedBytes {
				t.Fatalf("pid %d: outstanding %d/%d exceeds %d/%d", p.PID, p.OutstandingCount, p.OutstandingBytes, p.Allocations, p.AllocatedBytes)
			}
			x := outs[p.PID]
			outs[p.PID] = [2]uint64{x[0] + p.OutstandingCount, x[1] + p.OutstandingBytes}
		}
		if allocs != counted {
			t.Fatalf("process allocations %d, want %d", allocs, counted)
		}
		for _, fm := range r.FileMappings {
			byFile[fm.PID] += fm.OutstandingBytes
		}
		for pid, n := range procFileOut {
			if n != fileOut[pid] || n != byFile[pid] {
				t.Fatalf("pid %d: file mappings outstanding %d, its file sites %d, file_mappings %d", pid, n, fileOut[pid], byFile[pid])
			}
		}
		for pid, x := range perPid {
			if outs[pid] != x {
				t.Fatalf("pid %d: process outstanding %v != sum of its sites %v", pid, outs[pid], x)
			}
		}
		for _, x := range r.SocketPath.Processes {
			if x.AllocsAfterFirstCall > allocs {
				t.Fatalf("pid %d: %d allocations after the first socket call out of %d", x.PID, x.AllocsAfterFirstCall, allocs)
			}
		}
		var buf bytes.Buffer
		if err := r.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		if !json.Valid(buf.Bytes()) {
			t.Fatal("invalid JSON")
		}
		buf.Reset()
		if err := r.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
	})
}

// checkIntervals: the deltas of two intervals add up to the final totals.
func checkIntervals(t *testing.T, r *Report, i1, i2 Interval) {
	t.Helper()
	var want, got [3]uint64
	for _, s := range r.ShownSites() { // intervals, like every view, leave file mappings out
		want[0] += s.Count
		want[1] += s.Bytes
	}
	for _, p := range r.Processes {
		want[2] += p.Allocations
	}
	for _, iv := range []Interval{i1, i2} {
		for _, s := range iv.TopSites {
			got[0] += s.DeltaCount
			got[1] += s.DeltaBytes
		}
		for _, p := range iv.Processes {
			got[2] += p.DeltaAllocations
		}
	}
	if got != want {
		t.Fatalf("interval deltas add up to %v, totals %v", got, want)
	}
}

// checkExports: pprof validates and keeps the totals; folded has a line per site.
func checkExports(t *testing.T, r *Report) {
	t.Helper()
	var buf bytes.Buffer
	if err := r.WritePprof(&buf); err != nil {
		t.Fatal(err)
	}
	p, err := profile.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var got [4]int64
	for _, s := range p.Sample {
		for i, v := range s.Value {
			got[i] += v
		}
	}
	shown := &Report{Sites: r.ShownSites()} // the profile's sites: file mappings left out
	if want := siteTotals(shown); got != want || len(p.Sample) != len(shown.Sites) {
		t.Fatalf("pprof totals %v over %d samples, JSON %v over %d sites", got, len(p.Sample), want, len(shown.Sites))
	}
	buf.Reset()
	if err := r.WriteFolded(&buf, FoldedOptions{}); err != nil {
		t.Fatal(err)
	}
	weighed := 0 // sites of 0 bytes have no line
	for i := range shown.Sites {
		if shown.Sites[i].Bytes > 0 {
			weighed++
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != weighed {
		t.Fatalf("%d folded lines for %d sites of bytes > 0", n, weighed)
	}
}
