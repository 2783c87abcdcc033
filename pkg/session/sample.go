package session

import (
	"math"
	"math/rand/v2"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
)

// Sampling: the kernel keeps exact totals per process and function, and sends only the calls a
// Poisson process over the bytes picked. A call of size s is picked with chance p = 1 - exp(-s/N),
// so it stands for 1/p calls and s/p bytes: unbiased estimates per site. Count mode sums the
// weights here; full mode hands each picked call to the builder with a whole-number weight.

type sampleKey struct {
	pid     uint32
	kind    event.Kind
	stackID uint64
}

// sampleSum is one site's estimate so far.
type sampleSum struct {
	comm         string
	calls, bytes float64
}

// estimate is a sampled site ready for the report.
type estimate struct {
	pid          uint32
	comm         string
	kind         event.Kind
	stack        uint64
	calls, bytes float64
}

// weight is how many calls, and bytes, one picked call of size bytes stands for.
func weight(size, mean uint64) (calls, bytes float64) {
	p := -math.Expm1(-float64(size) / float64(mean))
	if p <= 0 {
		return 0, 0
	}
	return 1 / p, float64(size) / p
}

// callWeight is how many calls one picked call of size bytes stands for, as a whole number whose
// expectation is the exact weight 1/p (stochastic rounding keeps the estimates unbiased).
func (s *Session) callWeight(size uint64) uint64 {
	w, _ := weight(size, s.opts.SampleBytes)
	if w < 1 {
		return 1
	}
	n := math.Floor(w)
	if rand.Float64() < w-n {
		n++
	}
	return uint64(n)
}

// addSample weighs a picked call into its site; the caller holds bmu.
func (s *Session) addSample(a *event.Alloc) {
	if s.samples == nil {
		s.samples = make(map[sampleKey]*sampleSum)
	}
	k := sampleKey{a.PID, a.Kind, a.StackID}
	x := s.samples[k]
	if x == nil {
		x = &sampleSum{comm: a.Comm}
		s.samples[k] = x
	}
	c, b := weight(a.Size, s.opts.SampleBytes)
	x.calls += c
	x.bytes += b
}

// sampledIfAny reads the exact totals and turns the samples into sites; call it before the tracer closes.
func (s *Session) sampledIfAny() ([]loader.Total, []estimate, error) {
	if s.opts.SampleBytes == 0 {
		return nil, nil, nil
	}
	totals, err := s.tracer.Totals()
	if err != nil {
		return nil, nil, err
	}
	s.bmu.Lock()
	defer s.bmu.Unlock()
	out := make([]estimate, 0, len(s.samples))
	for k, x := range s.samples {
		out = append(out, estimate{pid: k.pid, comm: x.comm, kind: k.kind, stack: k.stackID, calls: x.calls, bytes: x.bytes})
	}
	return totals, out, nil
}

// addLiveTotals adds the kernel's totals of processes still running to a snapshot: with sampling
// they reach the builder only when a process exits or the trace ends.
func addLiveTotals(rep *report.Report, totals []loader.Total) {
	running := map[uint32]*report.Process{}
	for i := range rep.Processes {
		if p := &rep.Processes[i]; !p.Exited && p.FoldedProcesses == 0 {
			running[p.PID] = p
		}
	}
	for _, t := range totals {
		p := running[t.PID]
		if p == nil {
			continue
		}
		switch t.Kind {
		case event.KindNone: // frees by realloc(p, 0)
			p.Frees += t.Calls
			continue
		case event.Free, event.Dallocx, event.Sdallocx, event.OperatorDelete, event.OperatorDeleteArray:
			// its bytes are the calls that released a block: not free(NULL)
			p.Frees += t.Bytes
			if t.Kind == event.Free {
				p.FreeNullCalls += t.Calls - min(t.Bytes, t.Calls)
			}
		default:
			p.Allocations += t.Calls
			p.AllocatedBytes += t.Bytes
			p.HeapCalls += t.Calls
			p.HeapBytes += t.Bytes
		}
		c := p.HeapByKind[t.Kind.String()]
		c.Calls += t.Calls
		if !t.Kind.IsFree() {
			c.Bytes += t.Bytes
		}
		p.HeapByKind[t.Kind.String()] = c
	}
}
