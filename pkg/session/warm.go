package session

import (
	"sync"

	"github.com/udstrace/udstrace/pkg/kstack"
	"github.com/udstrace/udstrace/pkg/procmaps"
)

// symbolWarmer loads the symbols of each module a stack passes through, once, on a goroutine of
// its own while the trace runs: the report would otherwise read them all after the traced
// command ended (libc's compressed DWARF alone takes ~0.1 s), and the time from exit to report
// is what a user waits for.
type symbolWarmer struct {
	seen map[uint32]bool // guarded by the stackStore's mutex
	ids  chan uint32
	done sync.WaitGroup
}

func (w *symbolWarmer) start(maps *procmaps.Table) {
	w.seen = map[uint32]bool{}
	w.ids = make(chan uint32, 256)
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		for id := range w.ids {
			if m := maps.ByID(id); m != nil {
				m.PreloadSymbols()
			}
		}
	}()
}

// modulesOf queues the modules of frames not queued before. A full queue drops the id: that
// module's symbols are read at the report, as without the warmer. Called with the store locked.
func (w *symbolWarmer) modulesOf(frames []kstack.Frame) {
	if w.ids == nil {
		return // stopped
	}
	for _, f := range frames {
		id := f.Module()
		if w.seen[id] {
			continue
		}
		w.seen[id] = true
		select {
		case w.ids <- id:
		default:
		}
	}
}

// stop ends the queue; the modules already queued are still loaded (the report symbolizes from
// them). Called with the store locked.
func (w *symbolWarmer) stop() {
	if w.ids != nil {
		close(w.ids)
		w.ids = nil
	}
}

// wait waits for the warmer's goroutine to finish: the modules' files must not be closed under a
// load.
func (w *symbolWarmer) wait() { w.done.Wait() }
