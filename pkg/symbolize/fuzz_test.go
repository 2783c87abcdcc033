package symbolize

import (
	"bytes"
	"testing"
)

// FuzzOpen feeds arbitrary bytes through the whole API. Seeds in
// testdata/fuzz/FuzzOpen are small real ELF files, truncated and mutated.
func FuzzOpen(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x7fELF\x02\x01\x01\x00"))
	panicsFatal = true
	f.Cleanup(func() { panicsFatal = false })
	// All debug-file lookups land in an empty directory.
	root := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := Options{Root: root, DebugDirs: []string{"/dbg"}, Path: "/bin/fuzzed"}
		b, err := Open(bytes.NewReader(data), int64(len(data)), opts)
		if err != nil {
			return
		}
		_ = b.BuildID()
		_ = b.HasSymbols()
		addrs := []uint64{0, 0x1000, 0x401000, ^uint64(0)}
		for _, s := range b.loads {
			addrs = append(addrs, s.vaddr, s.vaddr+s.filesz/2)
			b.FileOffsetToVAddr(s.off)
		}
		if syms := b.tab.Load().syms; syms != nil {
			for i := 0; i < len(syms.addrs) && i < 16; i++ {
				addrs = append(addrs, syms.addrs[i], syms.addrs[i]+5)
			}
		}
		for _, a := range addrs {
			for _, fr := range b.Symbolize(a) {
				if fr.Line < 0 {
					t.Errorf("negative line %+v", fr)
				}
			}
		}
		// Call sites are target-controlled too: every address as a return address, every
		// other as the callee, through both ends of the chain search.
		for i, a := range addrs {
			callee := addrs[(i+1)%len(addrs)]
			if fs := TailCalls(b, a, b, callee, func(string) bool { return false }); len(fs) > maxTailDepth {
				t.Errorf("%d tail-call frames, more than the %d bound", len(fs), maxTailDepth)
			}
		}
		if dw := b.dwarf(); dw != nil {
			dw.mu.Lock()
			var pcs []uint64
			for _, u := range dw.units {
				for _, cs := range u.sites {
					pcs = append(pcs, cs.pc)
				}
			}
			dw.mu.Unlock()
			for i, pc := range pcs {
				if i < 64 {
					TailCalls(b, pc, b, pcs[len(pcs)-1-i], nil)
				}
			}
		}
	})
}
