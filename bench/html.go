package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/report"
)

// chromium is Debian's browser, which the HTML rows drive headless.
const chromium = "/usr/bin/chromium"

// benchHTML measures the HTML report of a report of n sites (stacks 12 to 40 frames deep over
// 3,000 functions, as pkg/report's TestHTMLTenThousandSites makes): the page's size, and the time
// headless Chromium takes from navigation to the page drawn (its script done), median of the runs.
func benchHTML(ctx context.Context, e *env, c config) error {
	page := filepath.Join(e.tmp, "sites.html")
	f, err := os.Create(page)
	if err != nil {
		return err
	}
	if err := bigReport(c.htmlSites).WriteHTML(f); err != nil {
		f.Close()
		return fmt.Errorf("writing the page: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	st, err := os.Stat(page)
	if err != nil {
		return err
	}
	fmt.Printf("\nHTML report (median of %d runs; navigation to the page drawn, in a fresh browser each run)\n\n", c.repeat)
	rows := [][]string{{"page", "sites", "page MB", "drawn in s", "runs"}}
	row := []string{"--format html, headless chromium", fmt.Sprint(c.htmlSites), fmt.Sprintf("%.2f", float64(st.Size())/1e6)}
	if _, err := os.Stat(chromium); err != nil {
		rows = append(rows, append(row, "n/a (not installed)", "0"))
		printTable(rows, c.markdown)
		return nil
	}
	var times []time.Duration
	for range c.repeat {
		d, err := drawTime(ctx, page)
		if err != nil {
			return fmt.Errorf("html: %w", err)
		}
		times = append(times, d)
	}
	slices.Sort(times)
	rows = append(rows, append(row, fmt.Sprintf("%.3f", times[len(times)/2].Seconds()), fmt.Sprint(len(times))))
	printTable(rows, c.markdown)
	return nil
}

// drawTime opens page in a fresh headless Chromium and times navigation to html[data-ready].
func drawTime(ctx context.Context, page string) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "udstrace-bench-chromium-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 900), chromedp.UserDataDir(dir))
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(bctx); err != nil { // the browser up, before the clock starts
		return 0, err
	}
	start := time.Now()
	if err := chromedp.Do(bctx, chromedp.Navigate("file://"+page), chromedp.WaitReady(chromedp.CSS("html[data-ready]"))); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// bigReport builds a report of n sites from synthetic events, through the Builder as a trace does.
func bigReport(n int) *report.Report {
	rng := rand.New(rand.NewPCG(15, 15))
	stacks := map[uint64][]event.Frame{}
	frame := func(off uint64) event.Frame {
		return event.Frame{Addr: 0x7f0000000000 + off, Module: "/usr/lib/libbig.so", FileOffset: off, ModuleKey: "8:1:/usr/lib/libbig.so", Return: true}
	}
	b := report.NewBuilder(report.Options{Stacks: func(id uint64) []event.Frame { return stacks[id] }})
	addr := uint64(0x100000)
	for i := range n {
		st := []event.Frame{frame(0x40)}
		for range 10 + rng.IntN(29) {
			st = append(st, frame(uint64(3+rng.IntN(3000))*0x40))
		}
		st = append(st, frame(0x80))
		id := uint64(i + 1)
		stacks[id] = st
		for range 1 + rng.IntN(3) {
			addr += 0x1000
			t := uint64(i)*1e6 + 1
			b.Alloc(&event.Alloc{Time: t, PID: 42, TID: 42, Comm: "big", Kind: event.Malloc, Size: uint64(16 + rng.IntN(100_000)), Addr: addr, StackID: id})
			if rng.IntN(3) == 0 {
				b.Alloc(&event.Alloc{Time: t + 1, PID: 42, TID: 42, Comm: "big", Kind: event.Free, Addr: addr, StackID: id})
			}
		}
	}
	return b.Finish(numberedSym{}, report.Meta{Command: []string{"big"}})
}

// numberedSym names libbig.so's frames after their offsets: thousands of functions in hundreds of files.
type numberedSym struct{}

func (numberedSym) Symbolize(f event.Frame) []report.SymFrame {
	n := f.FileOffset / 0x40
	if n == 1 {
		return []report.SymFrame{{Function: "malloc"}}
	}
	return []report.SymFrame{{Function: fmt.Sprintf("big::namespace_%d::function_%d", n%97, n), Offset: 0x10,
		File: fmt.Sprintf("/build/src/module_%d/file_%d.cc", n%53, n%600), Line: int(n % 2000)}}
}
