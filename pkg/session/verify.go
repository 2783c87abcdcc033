package session

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/launch"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/workload"
)

// VerifyRow compares one process's malloc-family counts: udstrace's uprobes against the LD_PRELOAD counter.
type VerifyRow struct {
	Comm        string
	TracedPID   uint32
	PreloadPID  int
	Kinds       []VerifyKind
	Match       bool
	Explanation []string // why counts differ, per call site
}

// VerifyKind is one function's calls as each side saw them.
type VerifyKind struct {
	Kind            string
	Traced, Preload uint64
}

// VerifyEnv is what a traced run adds to its environment so that it holds the same variables as
// the interposer's run: programs allocate per variable (a shell copies each one), and the counts
// must not differ for that. LD_PRELOAD keeps what the user preloads (an allocator: the
// interposer's run puts the counter in front of it); ALLOCOUNT_DIR is empty.
func VerifyEnv() []string { return []string{"LD_PRELOAD=" + os.Getenv("LD_PRELOAD"), "ALLOCOUNT_DIR="} }

// interposerPreload is the interposer's LD_PRELOAD: the counter first, so that it sees every
// call, then what the user preloads (jemalloc, say), which the counter forwards to.
func interposerPreload(counter string) string {
	if user := os.Getenv("LD_PRELOAD"); user != "" {
		return counter + ":" + user
	}
	return counter
}

// Verify runs the command again, untraced, under the counting interposer shipped with udstrace,
// and compares its counts with the report's, process by process (matched by name, in start order).
func Verify(ctx context.Context, command []string, rep *report.Report) ([]VerifyRow, error) {
	dir, err := os.MkdirTemp("", "udstrace-verify-")
	if err != nil {
		return nil, fmt.Errorf("verifying: %w", err)
	}
	defer os.RemoveAll(dir)
	bins, err := workload.Extract(dir)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "counts")
	if err := os.Mkdir(out, 0o700); err != nil {
		return nil, fmt.Errorf("verifying: %w", err)
	}
	// Started as the traced run was (Run with NoASLR): the same file, argv and variables, no ASLR.
	path, err := commandPath(command[0])
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), "LD_PRELOAD="+interposerPreload(bins.Allocount), "ALLOCOUNT_DIR="+out)
	p, err := launch.Start(command, launch.Options{Stdout: os.Stderr, Stderr: os.Stderr, Env: env, Path: path, NoASLR: true})
	if err != nil {
		return nil, fmt.Errorf("verifying: %w", err)
	}
	if err := p.Release(); err != nil {
		p.Abort()
		return nil, fmt.Errorf("verifying: %w", err)
	}
	// Its exit status is the command's business; the counts are ours.
	if _, _, err := p.Wait(ctx.Done(), nil, DefaultKillAfter); err != nil {
		return nil, fmt.Errorf("verifying: %w", err)
	}
	preload, err := readCounts(out)
	if err != nil {
		return nil, err
	}
	return compare(rep, preload), nil
}

type counted struct {
	pid   int
	comm  string
	funcs map[string]workload.Count
}

func readCounts(dir string) ([]counted, error) {
	all, err := workload.ReadCounts(dir)
	if err != nil {
		return nil, err
	}
	var out []counted
	for _, a := range all {
		out = append(out, counted{pid: a.PID, comm: a.Comm, funcs: a.Funcs})
	}
	return out, nil
}

// foldCounts folds the interposer's counts the way the uprobes of a process's allocator report
// them (as, from loader.ReportedAs; nil: glibc's). free is compared without free(NULL) on both
// sides: it does nothing, and libc calls it on itself directly (setlocale, tzset, stdio's backup
// areas...), where no interposer sees it, while the uprobes count every call.
func foldCounts(funcs map[string]workload.Count, as map[string]string) map[string]uint64 {
	calls := map[string]uint64{}
	folded := workload.Traced(funcs)
	if as != nil {
		folded = workload.TracedAs(funcs, as)
	}
	for kind, n := range folded {
		calls[kind] = n[0]
	}
	if n := funcs["free"].Calls - funcs["free"].Null; n > 0 {
		calls["free"] = n
	} else {
		delete(calls, "free")
	}
	return calls
}

// reportedAs is how a traced process's allocator names its functions: its object first, then
// the libc its program links (for the functions the allocator lacks); nil when unknown.
func reportedAs(p report.Process) map[string]string {
	if p.Allocator == nil {
		return nil
	}
	objs := []string{p.Allocator.Object}
	if libc, err := loader.ResolveLibc(p.Exe); err == nil {
		objs = append(objs, libc)
	}
	as, err := loader.ReportedAs(objs)
	if err != nil {
		return nil
	}
	return as
}

func compare(rep *report.Report, preload []counted) []VerifyRow {
	used := make([]bool, len(preload))
	folds := map[string]map[string]string{} // by allocator and exe: placing probes to learn the names decodes code
	var rows []VerifyRow
	for _, p := range rep.Processes {
		row := VerifyRow{Comm: p.Comm, TracedPID: p.PID, PreloadPID: -1}
		var pc *counted
		for i := range preload {
			if !used[i] && preload[i].comm == p.Comm {
				used[i], pc, row.PreloadPID = true, &preload[i], preload[i].pid
				break
			}
		}
		kinds := map[string]bool{}
		traced := map[string]uint64{}
		for k, c := range p.HeapByKind {
			if kind, ok := event.KindByName(k); !ok || kind >= event.Mallocx {
				continue // an allocator's own entry point (operator new, mallocx): the counter interposes the C functions only
			}
			if k == "free" {
				c.Calls -= min(p.FreeNullCalls, c.Calls) // as readCounts: free(NULL) is not compared
			}
			if c.Calls > 0 {
				traced[k], kinds[k] = c.Calls, true
			}
		}
		var pcalls map[string]uint64
		if pc != nil {
			key := p.Exe
			if p.Allocator != nil {
				key += "\x00" + p.Allocator.Object
			}
			as, ok := folds[key]
			if !ok {
				as = reportedAs(p)
				folds[key] = as
			}
			pcalls = foldCounts(pc.funcs, as)
			for k := range pcalls {
				kinds[k] = true
			}
		}
		row.Match = pc != nil
		for _, k := range sortedKeys(kinds) {
			vk := VerifyKind{Kind: k, Traced: traced[k]}
			if pc != nil {
				vk.Preload = pcalls[k]
			}
			if vk.Traced != vk.Preload {
				row.Match = false
				row.Explanation = append(row.Explanation, explainKind(rep, p, vk)...)
			}
			row.Kinds = append(row.Kinds, vk)
		}
		if pc == nil {
			row.Explanation = append(row.Explanation, "no process named "+p.Comm+" wrote counts under the interposer (it was killed, or its name differs there)")
		}
		rows = append(rows, row)
	}
	return rows
}

// explainKind names the call sites behind a difference: calls the dynamic loader makes reach
// libc's malloc through its own pointer, which no LD_PRELOAD interposer sees.
// An allocator's calls of its own functions (tcmalloc's TCMallocGuard) do not go through the
// interposable symbol either.
func explainKind(rep *report.Report, p report.Process, vk VerifyKind) []string {
	if vk.Traced < vk.Preload {
		return []string{fmt.Sprintf("%s: the interposer saw %d more calls than the uprobes", vk.Kind, vk.Preload-vk.Traced)}
	}
	if vk.Kind == "free" {
		return explainFrees(rep, p, vk)
	}
	var out []string
	var loader uint64
	for _, s := range rep.Sites {
		if s.PID != p.PID || s.Kind != vk.Kind {
			continue
		}
		f := directCaller(s.Stack)
		switch {
		case f != nil && isLoader(f.Module):
			loader += s.Count
			out = append(out, fmt.Sprintf("%s: %d call(s) at site #%d from the dynamic loader (%s), which calls libc's %s directly, not through the interposable symbol", vk.Kind, s.Count, s.ID, f.Symbol, vk.Kind))
		case f != nil && inAllocator(p, f.Module):
			loader += s.Count
			out = append(out, fmt.Sprintf("%s: %d call(s) at site #%d from the allocator itself (%s), which calls its own %s directly, not through the interposable symbol", vk.Kind, s.Count, s.ID, f.Symbol, vk.Kind))
		}
	}
	if rest := vk.Traced - vk.Preload; loader < rest {
		out = append(out, fmt.Sprintf("%s: %d more call(s) not explained by the dynamic loader", vk.Kind, rest-loader))
	} else if loader > rest {
		out = append(out, fmt.Sprintf("%s: the loader's calls (%d) exceed the difference (%d): the interposer saw some calls the uprobes did not", vk.Kind, loader, rest))
	}
	return out
}

// directCaller is the frame that called the allocator (raw frame 1), or nil.
func directCaller(stack []report.StackFrame) *report.StackFrame {
	for i := range stack {
		if stack[i].Frame == 1 {
			return &stack[i]
		}
	}
	return nil
}

func isLoader(module string) bool { return strings.HasPrefix(filepath.Base(module), "ld-") }

// explainFrees names the callers behind extra frees: libc and the dynamic loader free memory
// they allocated themselves (a dying thread's tcache) by calling libc's free directly.
func explainFrees(rep *report.Report, p report.Process, vk VerifyKind) []string {
	var out []string
	var inside uint64
	for _, s := range rep.Sites {
		if f := directCaller(s.Stack); s.PID == p.PID && f != nil && inAllocator(p, f.Module) && s.Count > s.OutstandingCount {
			inside += s.Count - s.OutstandingCount
			out = append(out, fmt.Sprintf("free: %d call(s) by the allocator on the blocks of site #%d, which it allocated itself (%s)", s.Count-s.OutstandingCount, s.ID, f.Symbol))
		}
	}
	for _, f := range rep.UnmatchedFreeSites {
		if f.PID != p.PID || len(f.Caller) == 0 || !isLibcOrLoader(f.Caller[0].Module) {
			continue
		}
		inside += f.Count
		out = append(out, fmt.Sprintf("free: %d call(s) from %s, libc calling its own free directly (not through the interposable symbol) on memory it holds itself, such as a dying thread's cache", f.Count, f.Caller[0].Symbol))
	}
	if rest := vk.Traced - vk.Preload; inside < rest {
		out = append(out, fmt.Sprintf("free: %d more call(s) not explained by libc's or the loader's own frees", rest-inside))
	} else if inside > rest {
		out = append(out, fmt.Sprintf("free: libc's own frees (%d) exceed the difference (%d): the interposer saw some frees the uprobes did not", inside, rest))
	}
	return out
}

// inAllocator says whether a module is the process's allocator object (not libc: glibc's own
// calls are explained above).
func inAllocator(p report.Process, module string) bool {
	return p.Allocator != nil && p.Allocator.Name != "glibc" && filepath.Base(module) == filepath.Base(p.Allocator.Object)
}

func isLibcOrLoader(module string) bool {
	return strings.HasPrefix(filepath.Base(module), "libc.so") || isLoader(module)
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
