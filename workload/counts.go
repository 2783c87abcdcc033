package workload

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Count is one function's figures as allocount.so saw them: calls, bytes asked, and NULL
// results (for free: calls with a NULL pointer).
type Count struct{ Calls, Bytes, Null uint64 }

// Counted is one process's allocount.so file.
type Counted struct {
	PID   int
	Comm  string           // from the file's "#comm NAME" line
	Funcs map[string]Count // by the function name the program called
}

// ReadCounts parses every allocount.PID file allocount.so wrote into dir, in PID order. A
// process's allocount.PID.exec (its calls before an execve, in the image it left) is added to
// allocount.PID, so the counts cover the PID's whole life as a tracer following it sees it.
func ReadCounts(dir string) ([]Counted, error) {
	files, err := filepath.Glob(filepath.Join(dir, "allocount.*"))
	if err != nil {
		return nil, fmt.Errorf("listing interposer counts: %w", err)
	}
	byPID := map[int]*Counted{}
	for _, f := range files {
		rest := strings.TrimPrefix(filepath.Base(f), "allocount.")
		pidText, suffix, _ := strings.Cut(rest, ".")
		pid, err := strconv.Atoi(pidText)
		if err != nil || (suffix != "" && suffix != "exec") {
			continue
		}
		c, err := readCountFile(f)
		if err != nil {
			return nil, err
		}
		x := byPID[pid]
		if x == nil {
			x = &Counted{PID: pid, Funcs: map[string]Count{}}
			byPID[pid] = x
		}
		if suffix == "" || x.Comm == "" {
			x.Comm = cmpOr(c.Comm, x.Comm) // the final image names the process
		}
		for name, n := range c.Funcs {
			m := x.Funcs[name]
			x.Funcs[name] = Count{m.Calls + n.Calls, m.Bytes + n.Bytes, m.Null + n.Null}
		}
	}
	out := make([]Counted, 0, len(byPID))
	for _, c := range byPID {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// Traced folds one process's counts into what udstrace's uprobes report, by function: calls and
// bytes. aligned_alloc is memalign in glibc 2.36 (one address, one probe, reported under the first
// name); free's calls include free(NULL), a call like any other, and free has no bytes.
func Traced(funcs map[string]Count) map[string][2]uint64 {
	return TracedAs(funcs, map[string]string{"aligned_alloc": "memalign"})
}

// TracedAs folds counts as Traced does, each function under the kind as names it (loader.ReportedAs:
// jemalloc's aligned_alloc is its own function, glibc's is memalign).
func TracedAs(funcs map[string]Count, as map[string]string) map[string][2]uint64 {
	out := map[string][2]uint64{}
	for name, n := range funcs {
		kind, calls, bytes := name, n.Calls, n.Bytes
		if k, ok := as[name]; ok {
			kind = k
		}
		if name == "free" {
			bytes = 0
		}
		if calls == 0 {
			continue
		}
		c := out[kind]
		out[kind] = [2]uint64{c[0] + calls, c[1] + bytes}
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func readCountFile(path string) (Counted, error) {
	c := Counted{Funcs: map[string]Count{}}
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("reading interposer counts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "#comm "); ok {
			c.Comm = name
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var name string
		var n Count
		if _, err := fmt.Sscan(line, &name, &n.Calls, &n.Bytes, &n.Null); err != nil {
			return c, fmt.Errorf("parsing %s: %q: %w", path, line, err)
		}
		c.Funcs[name] = n
	}
	return c, sc.Err()
}
