package ktable

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func sampleEntry() (*Entry, *Dict) {
	d := NewDict(64)
	a, _ := d.intern(Rule{CFAKind: 1, CFAReg: 7, CFAOff: 8, RAKind: 2, RAOff: -8})
	b, _ := d.intern(Rule{CFAKind: 1, CFAReg: 7, CFAOff: 16, RAKind: 2, RAOff: -8, FPKind: 2, FPOff: -16})
	pages := map[uint32][]uint64{
		5: {Row(5<<PageShift, a), Row(5<<PageShift+4, b)},
		9: {Row(9<<PageShift, b)},
	}
	return NewEntry(pages, map[uint32]bool{5: true}, d), d
}

func TestCacheRoundTrip(t *testing.T) {
	c, err := OpenCache(filepath.Join(t.TempDir(), "c"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	e, d := sampleEntry()
	want := map[uint32][]uint64{5: {Row(5<<PageShift, 0), Row(5<<PageShift+4, 1)}, 9: {Row(9<<PageShift, 1)}}
	if err := c.Store("00112233445566778899", 1234, e); err != nil {
		t.Fatal(err)
	}
	if c.Load("00112233445566778899", 999) != nil {
		t.Error("an entry for a file of another size was taken")
	}
	got := c.Load("00112233445566778899", 1234)
	if got == nil {
		t.Fatal("the entry did not come back")
	}
	if len(got.Pages) != 1 || !got.Hot[5] || len(got.Cold()) != 1 || got.Cold()[0] != 9 {
		t.Fatalf("hot %v, decoded %v, cold %v: want page 5 hot and decoded, 9 cold", got.Hot, got.Pages, got.Cold())
	}
	d2 := NewDict(64)
	if err := got.Rebase(d2); err != nil {
		t.Fatal(err)
	}
	cold, ok := got.TakeCold(9)
	if !ok {
		t.Fatal("cold page 9 did not decode")
	}
	got.Pages[9] = cold
	// Rules keep their meaning across dictionaries.
	for pg, rows := range want {
		for i, r := range rows {
			if d.Rules(0)[RowRule(r)] != d2.Rules(0)[RowRule(got.Pages[pg][i])] || RowOffset(r) != RowOffset(got.Pages[pg][i]) {
				t.Errorf("page %d row %d: %#x came back as %#x", pg, i, r, got.Pages[pg][i])
			}
		}
	}
}

func TestCacheRejects(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	c, err := OpenCache(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := sampleEntry()
	good := encodeEntry("aabbccdd", 10, e)
	for name, data := range map[string][]byte{
		"truncated": good[:len(good)-3],
		"trailing":  append(append([]byte{}, good...), 0),
		"magic":     append([]byte("x"), good[1:]...),
	} {
		if _, err := decodeEntry(data, "aabbccdd", 10); err == nil {
			t.Errorf("%s: a bad entry decoded", name)
		}
	}
	// A cold page is checked when it is taken: a bad rule index there is refused, not loaded.
	bad, err := decodeEntry(corrupt(good, len(good)-8, 0xff), "aabbccdd", 10)
	if err != nil {
		t.Fatal(err)
	}
	_ = bad.Rebase(NewDict(64))
	if _, ok := bad.TakeCold(9); ok {
		t.Error("a cold page with a bad rule index was taken")
	}
	// A FIFO or a symlink in place of an entry is not followed or waited on.
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "deadbeef.unwind")); err != nil {
		t.Fatal(err)
	}
	if c.Load("deadbeef", 10) != nil {
		t.Error("a symlink was taken for an entry")
	}
	if c.Load("../../etc/passwd", 10) != nil {
		t.Error("a path was taken for a build-id")
	}
	// A directory others may write is refused.
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCache(open, 1<<20); err == nil {
		t.Error("a world-writable cache directory was accepted")
	}
}

func corrupt(b []byte, at int, v byte) []byte {
	out := append([]byte{}, b...)
	out[at] = v
	return out
}

func TestCacheTrim(t *testing.T) {
	c, err := OpenCache(filepath.Join(t.TempDir(), "c"), 1)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := sampleEntry()
	_ = c.Store("aaaaaaaa", 1, e)
	_ = c.Store("bbbbbbbb", 1, e)
	ents, _ := os.ReadDir(c.dir)
	if len(ents) > 1 {
		t.Errorf("%d entries kept under a 1-byte bound", len(ents))
	}
}

// FuzzDecodeEntry: no input makes decoding panic, and what decodes encodes back the same.
func FuzzDecodeEntry(f *testing.F) {
	e, _ := sampleEntry()
	f.Add(encodeEntry("aabbccdd", 10, e))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeEntry(data, "aabbccdd", 10)
		if err != nil {
			return
		}
		for _, pg := range got.Cold() {
			got.global = make([]uint32, len(got.Rules))
			for i := range got.global {
				got.global[i] = uint32(i)
			}
			rows, ok := got.TakeCold(pg)
			if ok {
				got.Pages[pg] = rows
			}
		}
		again, err := decodeEntry(encodeEntry("aabbccdd", 10, got), "aabbccdd", 10)
		if err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		if !reflect.DeepEqual(again.Rules, got.Rules) {
			t.Fatal("rules changed on a round trip")
		}
	})
}
