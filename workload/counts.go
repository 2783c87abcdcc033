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

// ReadCounts parses every allocount.PID file allocount.so wrote into dir, in PID order.
func ReadCounts(dir string) ([]Counted, error) {
	files, err := filepath.Glob(filepath.Join(dir, "allocount.*"))
	if err != nil {
		return nil, fmt.Errorf("listing interposer counts: %w", err)
	}
	var out []Counted
	for _, f := range files {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Ext(f), "."))
		if err != nil {
			continue
		}
		c, err := readCountFile(f)
		if err != nil {
			return nil, err
		}
		c.PID = pid
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
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
