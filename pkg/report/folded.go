package report

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Weight is what a folded line's value counts.
type Weight string

// The folded weights; the outstanding ones need full mode (count mode traces no frees).
const (
	WeightBytes            Weight = "bytes"
	WeightCount            Weight = "count"
	WeightOutstandingBytes Weight = "outstanding-bytes"
	WeightOutstandingCount Weight = "outstanding-count"
)

// Weights lists the folded weights, for help and validation.
var Weights = []Weight{WeightBytes, WeightCount, WeightOutstandingBytes, WeightOutstandingCount}

// Outstanding reports whether the weight needs frees traced.
func (w Weight) Outstanding() bool { return w == WeightOutstandingBytes || w == WeightOutstandingCount }

// FoldedOptions chooses a folded output's value and root.
type FoldedOptions struct {
	Weight Weight // "" is WeightBytes
	// ProcessRoot roots every stack at a frame naming its process ("comm-PID", as perf's
	// stackcollapse does with --pid), so one flame graph keeps processes apart.
	ProcessRoot bool
}

// WriteFolded writes one flame-graph line per site: frames outermost first joined by ";", a space,
// the weight. Sites of weight 0 are left out (flamegraph.pl draws nothing for them anyway).
func (r *Report) WriteFolded(w io.Writer, o FoldedOptions) error {
	if o.Weight == "" {
		o.Weight = WeightBytes
	}
	if !slices.Contains(Weights, o.Weight) {
		return fmt.Errorf("writing folded stacks: unknown weight %q", o.Weight)
	}
	if o.Weight.Outstanding() && r.Mode == "count" {
		return fmt.Errorf("writing folded stacks: %w", ErrNotTraced)
	}
	sites := r.ShownSites()
	lines := make([]string, 0, len(sites))
	var sb strings.Builder
	for i := range sites {
		s := &sites[i]
		v := s.weight(o.Weight)
		if v == 0 {
			continue
		}
		sb.Reset()
		if o.ProcessRoot {
			sb.WriteString(foldedName(processFrame(s.Comm, s.PID)))
			sb.WriteByte(';')
		}
		for j := len(s.Stack) - 1; j >= 0; j-- { // the stack is innermost first, inlined entries before their caller
			sb.WriteString(foldedName(frameName(&s.Stack[j])))
			if j > 0 {
				sb.WriteByte(';')
			}
		}
		if len(s.Stack) == 0 {
			sb.WriteString(foldedName(noStack))
		}
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatUint(v, 10))
		lines = append(lines, sb.String())
	}
	lines = append(lines, r.kernelFolded(o)...)
	slices.Sort(lines)
	_, err := io.WriteString(w, strings.Join(lines, "\n")+strings.Repeat("\n", min(len(lines), 1)))
	return err
}

// ErrNotTraced: what was asked for is not traced in this mode (count mode traces no frees).
var ErrNotTraced = errors.New("count mode traces no frees, so nothing is outstanding")

func (s *Site) weight(w Weight) uint64 {
	return w.of(s.Count, s.Bytes, s.OutstandingCount, s.OutstandingBytes)
}

// of picks the weight's figure among a site's four.
func (w Weight) of(count, bytes, outCount, outBytes uint64) uint64 {
	switch w {
	case WeightCount:
		return count
	case WeightOutstandingBytes:
		return outBytes
	case WeightOutstandingCount:
		return outCount
	}
	return bytes
}

// processFrame names a process as a root frame; pid 0 stands for folded processes.
func processFrame(comm string, pid uint32) string {
	if comm == "" {
		comm = "?"
	}
	if pid == 0 {
		return comm + "-(folded)"
	}
	return comm + "-" + strconv.FormatUint(uint64(pid), 10)
}

// foldedName keeps a frame name one field: the format splits on ";", the value on the last space, lines on newlines.
func foldedName(s string) string {
	if s == "" {
		return "?"
	}
	return strings.Map(func(r rune) rune {
		if r == ';' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return '_'
		}
		return r
	}, s)
}
