// Package browsertest opens pages in Debian's headless Chromium for tests, recording every
// console error, uncaught exception and network request the page makes.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Chromium is the browser the tests drive (Debian's chromium package, in the Makefile's TEST_DEPS).
const Chromium = "/usr/bin/chromium"

// Page is one page open in its own headless browser.
type Page struct {
	Ctx      context.Context
	URL      string
	mu       sync.Mutex
	errors   []string
	requests []string
}

// Open starts a headless Chromium of width×height and loads file (an absolute path) until its
// script marks it ready (html[data-ready]); the test is skipped without Chromium, except under
// CI=true, where it fails.
func Open(t testing.TB, file string, width, height int) (p *Page, load time.Duration) {
	t.Helper()
	if _, err := os.Stat(Chromium); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v: install chromium (make deps)", Chromium, err)
		}
		t.Skipf("%s: %v: install chromium (make deps)", Chromium, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(Chromium),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(width, height),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	p = &Page{Ctx: ctx, URL: "file://" + file}
	p.Do(t) // starts the browser and opens the tab, so that the listener misses nothing of the page
	err := chromedp.Listen(ctx, func(ev any) {
		p.mu.Lock()
		defer p.mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			p.requests = append(p.requests, e.Request.URL)
		case *runtime.EventExceptionThrown:
			p.errors = append(p.errors, fmt.Sprintf("exception: %s line %d %s", e.ExceptionDetails.Text, e.ExceptionDetails.LineNumber, describe(e.ExceptionDetails.Exception)))
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning || e.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range e.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				p.errors = append(p.errors, fmt.Sprintf("console.%s: %s", e.Type, strings.Join(args, " ")))
			}
		case *log.EventEntryAdded:
			if e.Entry.Level == log.EntryLevelError || e.Entry.Level == log.EntryLevelWarning {
				p.errors = append(p.errors, fmt.Sprintf("log %s %s: %s %s", e.Entry.Level, e.Entry.Source, e.Entry.Text, e.Entry.URL))
			}
		}
	})
	if err != nil {
		t.Fatalf("browser: listening: %v", err)
	}
	start := time.Now()
	p.Do(t, chromedp.Navigate(p.URL), chromedp.WaitReady(chromedp.CSS("html[data-ready]")))
	return p, time.Since(start)
}

// Do runs actions on the page, failing the test on an error.
func (p *Page) Do(t testing.TB, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(p.Ctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// Eval evaluates a JavaScript expression on p.
func Eval[T any](t testing.TB, p *Page, expr string) T {
	t.Helper()
	v, err := chromedp.Run(p.Ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("browser: evaluating %s: %v", expr, err)
	}
	return v
}

// Click clicks (a real mouse click at its middle) the first element sel matches.
func (p *Page) Click(t testing.TB, sel string) {
	t.Helper()
	p.Do(t, chromedp.Click(chromedp.CSS(sel)))
}

// Type types text into the first element sel matches, key by key.
func (p *Page) Type(t testing.TB, sel, text string) {
	t.Helper()
	p.Do(t, chromedp.SendKeys(chromedp.CSS(sel), text))
}

// Screenshot saves the whole page as a PNG file.
func (p *Page) Screenshot(t testing.TB, file string) {
	t.Helper()
	png, err := chromedp.Run(p.Ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Problems are the console errors and warnings, uncaught exceptions and log errors and
// warnings so far, and the requests made for anything but the page itself.
func (p *Page) Problems() (errors, requests []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.requests {
		if r != p.URL {
			requests = append(requests, r)
		}
	}
	return append([]string(nil), p.errors...), requests
}

func describe(o *runtime.RemoteObject) string {
	if o == nil {
		return ""
	}
	return o.Description
}
