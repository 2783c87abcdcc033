package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// benchAllocators measures allocbench with each allocator udstrace probes preloaded: untraced,
// and under udstrace's default flags, whose counts must equal those of the interposer loaded in
// front of the allocator (LD_PRELOAD=allocount.so:ALLOCATOR). Allocators not installed are
// left out (make deps installs them).
func benchAllocators(ctx context.Context, e *env, c config) error {
	libs := []struct{ name, so string }{
		{"glibc", ""},
		{"jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
		{"tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"},
		{"mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"},
	}
	out := [][]string{{"allocator", "untraced ns/pair", "udstrace ns/pair", "× untraced", "overhead ns/pair",
		"malloc seen/expected", "free seen/expected", "lost"}}
	others := map[string]bool{}
	for _, l := range libs {
		if l.so != "" {
			if _, err := os.Stat(l.so); err != nil {
				out = append(out, []string{l.name, "n/a (not installed)", "—", "—", "—", "—", "—", "—"})
				continue
			}
		}
		var env []string
		if l.so != "" {
			env = []string{"LD_PRELOAD=" + l.so}
		}
		ref, err := e.interposeWith(ctx, l.so, c.pairsTraced)
		if err != nil {
			return fmt.Errorf("%s: reference interposer run: %w", l.name, err)
		}
		var plain, traced []sample
		for i := 1; i <= c.repeat; i++ {
			if err := waitQuiet(ctx, *e, others); err != nil {
				return err
			}
			u, err := e.untracedWith(ctx, env, c.pairs)
			if err != nil {
				return fmt.Errorf("%s untraced: %w", l.name, err)
			}
			plain = append(plain, u)
			t, err := e.udstraceWith(ctx, env, c.pairsTraced)
			if err != nil {
				return fmt.Errorf("%s under udstrace: %w", l.name, err)
			}
			traced = append(traced, t)
			fmt.Fprintf(os.Stderr, "run %d/%d  allocator %-10s untraced %8.1f ns/pair, udstrace %8.1f ns/pair\n", i, c.repeat, l.name, u.ns, t.ns)
		}
		u, _ := median(plain, nsKey)
		t, lost := median(traced, nsKey)
		out = append(out, []string{l.name, fmt.Sprintf("%.1f", u.ns), fmt.Sprintf("%.1f", t.ns), ratio(t.ns / u.ns),
			fmt.Sprintf("%.1f", t.ns-u.ns), seen(t.malloc, ref.malloc), seen(t.free, ref.free), count(lost)})
	}
	fmt.Println()
	fmt.Println("Allocators (allocbench with each preloaded; expected: the interposer in front of it)")
	printTable(out, c.markdown)
	return nil
}

// untracedWith runs allocbench with env added (an allocator preloaded).
func (e *env) untracedWith(ctx context.Context, env []string, pairs int) (sample, error) {
	s := newSample()
	out, _, err := e.runChild(ctx, e.tmp, env, append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	_, err = parseBench(out, &s)
	return s, err
}

// interposeWith counts allocbench's calls with the interposer loaded in front of so ("": glibc).
func (e *env) interposeWith(ctx context.Context, so string, pairs int) (sample, error) {
	s := newSample()
	dir, err := os.MkdirTemp(e.tmp, "allocount-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	preload := e.allocount
	if so != "" {
		preload += ":" + so
	}
	out, _, err := e.runChild(ctx, e.tmp, []string{"LD_PRELOAD=" + preload, "ALLOCOUNT_DIR=" + dir}, append([]string{e.bench}, e.args(pairs)...)...) // the counter first, then the allocator
	if err != nil {
		return s, err
	}
	if _, err := parseBench(out, &s); err != nil {
		return s, err
	}
	counts, files, err := readAllocount(dir)
	if err != nil {
		return s, err
	}
	if files != 1 {
		return s, fmt.Errorf("allocount: want 1 count file, found %d", files)
	}
	s.malloc, s.free, s.null = counts["malloc"][0], counts["free"][0], counts["free"][1]
	return s, nil
}

// udstraceWith runs allocbench under udstrace's default flags with env added.
func (e *env) udstraceWith(ctx context.Context, env []string, pairs int) (sample, error) {
	s := newSample()
	c, r, err := e.udstraceRunEnv(ctx, env, nil, append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	if _, err := parseBench(c.out, &s); err != nil {
		return s, err
	}
	isBench := func(comm, exe string) bool {
		return exe == e.bench || filepath.Base(exe) == "allocbench" || comm == "allocbench"
	}
	var found bool
	if s.malloc, found = r.calls("malloc", isBench); !found {
		return s, fmt.Errorf("udstrace report has no allocbench process")
	}
	s.free, _ = r.calls("free", isBench)
	s.lost = r.LostEvents
	return s, nil
}
