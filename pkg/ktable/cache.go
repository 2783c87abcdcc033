package ktable

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"

	"github.com/udstrace/udstrace/internal/safeopen"
)

// Cache keeps compiled pages of rows on disk by the module's build-id, so a binary traced before
// starts with the pages its stacks needed then already loaded: compiling them is most of what a
// short-lived large program (gcc's cc1) would otherwise wait for.
//
// A cache entry is trusted only as far as it checks out: a directory of ours that no one else
// may write, a regular file of bounded size opened without following links, the right magic,
// build-id and file size, and rows that are in range and sorted. Anything else is ignored.
type Cache struct {
	dir      string
	maxBytes int64
}

// Entry is a module's cached pages: its own rule list, and per page rows whose rule index
// points into it (a trace's indexes are its own).
type Entry struct {
	Rules []Rule
	Pages map[uint32][]uint64 // file page -> rows (offset << 32 | index into Rules)
	Hot   map[uint32]bool     // pages a stack asked for (the others were loaded in bulk)
	// A loaded entry decodes its hot pages at once and the others when asked (TakeCold).
	cold   map[uint32][]byte
	global []uint32 // Rules' indexes in the Dict the entry was rebased on
}

const (
	cacheMagic   = "udstrace unwind cache\n"
	cacheVersion = 2 // bump when Compile, Rule or the layout changes
	maxEntry     = 64 << 20
)

var buildIDRe = regexp.MustCompile(`^[0-9a-f]{8,128}$`)

// ErrCacheUnsafe means the cache directory could be written by someone else.
var ErrCacheUnsafe = errors.New("cache directory is not private")

// OpenCache uses dir (created 0700 if missing); it must be a directory of this user's that
// group and others cannot write. maxBytes bounds the entries kept (oldest go first).
func OpenCache(dir string, maxBytes int64) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating unwind cache %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("checking unwind cache %s: %w", dir, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(sys.Uid) != os.Geteuid() || st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("checking unwind cache %s: %w (it must be a directory of yours, mode 0700)", dir, ErrCacheUnsafe)
	}
	return &Cache{dir: dir, maxBytes: maxBytes}, nil
}

func (c *Cache) path(buildID string) (string, bool) {
	if !buildIDRe.MatchString(buildID) {
		return "", false
	}
	return filepath.Join(c.dir, buildID+".unwind"), true
}

// Load reads the pages cached for a module; nil when there are none or the entry does not check out.
func (c *Cache) Load(buildID string, fileSize int64) *Entry {
	path, ok := c.path(buildID)
	if !ok {
		return nil
	}
	// The directory is checked private, but an entry is opened like any file: never a FIFO, a
	// device or a symlink, never over the bound.
	f, err := safeopen.Open(path, safeopen.Options{MaxSize: maxEntry})
	if err != nil {
		return nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEntry))
	if err != nil {
		return nil
	}
	e, err := decodeEntry(data, buildID, fileSize)
	if errors.Is(err, errEntry) {
		_ = os.Remove(path) // broken: rewritten the next time
	}
	if err != nil {
		return nil
	}
	return e
}

// Store writes a module's pages (replacing what was cached), through a temporary file renamed
// into place, then trims the cache to its bound.
func (c *Cache) Store(buildID string, fileSize int64, e *Entry) error {
	path, ok := c.path(buildID)
	if !ok || e == nil || len(e.Pages) == 0 {
		return nil
	}
	data := encodeEntry(buildID, fileSize, e)
	if len(data) > maxEntry {
		return nil
	}
	tmp, err := os.CreateTemp(c.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("writing unwind cache: %w", err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing unwind cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing unwind cache: %w", err)
	}
	c.trim()
	return nil
}

// trim removes the oldest entries while the cache is over its bound.
func (c *Cache) trim() {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	type entry struct {
		path string
		size int64
		mod  int64
	}
	var all []entry
	var total int64
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || filepath.Ext(e.Name()) != ".unwind" {
			continue
		}
		all = append(all, entry{filepath.Join(c.dir, e.Name()), info.Size(), info.ModTime().UnixNano()})
		total += info.Size()
	}
	slices.SortFunc(all, func(a, b entry) int { return cmp.Compare(a.mod, b.mod) })
	for _, e := range all {
		if total <= c.maxBytes {
			return
		}
		if os.Remove(e.path) == nil {
			total -= e.size
		}
	}
}

// The entry layout, little-endian: magic, version u32, build-id (u16 length, bytes), file size
// u64, rules (u32 count, 16 bytes each), pages (u32 count; each: page u32, flags u32 (1: hot),
// rows u32, then the rows as u64, offset << 32 | rule index).

func encodeEntry(buildID string, fileSize int64, e *Entry) []byte {
	le := binary.LittleEndian
	b := make([]byte, 0, 64+16*len(e.Rules)+16*len(e.Pages))
	b = append(b, cacheMagic...)
	b = le.AppendUint32(b, cacheVersion)
	b = le.AppendUint16(b, uint16(len(buildID)))
	b = append(b, buildID...)
	b = le.AppendUint64(b, uint64(fileSize))
	b = le.AppendUint32(b, uint32(len(e.Rules)))
	for _, r := range e.Rules {
		b = append(b, r.CFAKind, r.CFAReg, r.RAKind, r.RAReg, r.FPKind, r.FPReg, r.Aux, r.Flags)
		b = le.AppendUint32(b, uint32(r.CFAOff))
		b = le.AppendUint16(b, uint16(r.RAOff))
		b = le.AppendUint16(b, uint16(r.FPOff))
	}
	pages := slices.SortedFunc(maps.Keys(e.Pages), func(a, b uint32) int {
		// Hot pages first: they are decoded at once, the others on DecodeCold.
		if e.Hot[a] != e.Hot[b] {
			if e.Hot[a] {
				return -1
			}
			return 1
		}
		return cmp.Compare(a, b)
	})
	b = le.AppendUint32(b, uint32(len(pages)))
	for _, pg := range pages {
		rows := e.Pages[pg]
		b = le.AppendUint32(b, pg)
		var flags uint32
		if e.Hot[pg] {
			flags = 1
		}
		b = le.AppendUint32(b, flags)
		b = le.AppendUint32(b, uint32(len(rows)))
		for _, r := range rows {
			b = le.AppendUint64(b, r)
		}
	}
	return b
}

var (
	errEntry    = errors.New("bad unwind cache entry")
	errMismatch = errors.New("unwind cache entry of another file") // same build-id, another size
)

func decodeEntry(data []byte, buildID string, fileSize int64) (*Entry, error) {
	le := binary.LittleEndian
	d := data
	take := func(n int) []byte {
		if n < 0 || len(d) < n {
			d = nil
			return nil
		}
		p := d[:n]
		d = d[n:]
		return p
	}
	u32 := func() uint32 {
		if p := take(4); p != nil {
			return le.Uint32(p)
		}
		return 0
	}
	if string(take(len(cacheMagic))) != cacheMagic || u32() != cacheVersion {
		return nil, errEntry
	}
	n := take(2)
	if n == nil || string(take(int(le.Uint16(n)))) != buildID {
		return nil, errEntry
	}
	sz := take(8)
	if sz == nil {
		return nil, errEntry
	}
	if int64(le.Uint64(sz)) != fileSize {
		return nil, errMismatch
	}
	nrules := u32()
	if nrules > 1<<16 || uint64(nrules)*16 > uint64(len(d)) {
		return nil, errEntry
	}
	e := &Entry{Rules: make([]Rule, nrules)}
	for i := range e.Rules {
		p := take(16)
		e.Rules[i] = Rule{CFAKind: p[0], CFAReg: p[1], RAKind: p[2], RAReg: p[3], FPKind: p[4], FPReg: p[5], Aux: p[6], Flags: p[7],
			CFAOff: int32(le.Uint32(p[8:])), RAOff: int16(le.Uint16(p[12:])), FPOff: int16(le.Uint16(p[14:]))}
	}
	npages := u32()
	if uint64(npages)*12 > uint64(len(d)) {
		return nil, errEntry
	}
	e.Pages, e.Hot = make(map[uint32][]uint64, npages), map[uint32]bool{}
	seen := make(map[uint32]bool, npages)
	for i := uint32(0); i < npages; i++ {
		pg, flags, cnt := u32(), u32(), u32()
		if cnt == 0 || cnt > MaxRows || uint64(cnt)*8 > uint64(len(d)) || seen[pg] {
			return nil, errEntry
		}
		seen[pg] = true
		raw := take(int(cnt) * 8)
		if flags&1 == 0 {
			if e.cold == nil {
				e.cold = map[uint32][]byte{}
			}
			e.cold[pg] = raw // decoded when asked for
			continue
		}
		rows, ok := decodeRows(raw, pg, nrules)
		if !ok {
			return nil, errEntry
		}
		e.Hot[pg], e.Pages[pg] = true, rows
	}
	if len(d) != 0 {
		return nil, errEntry
	}
	return e, nil
}

// decodeRows checks and decodes one page's rows: in the page, sorted, the first at its start.
func decodeRows(raw []byte, pg, nrules uint32) ([]uint64, bool) {
	lo, hi := uint64(pg)<<PageShift, uint64(pg+1)<<PageShift
	rows := make([]uint64, len(raw)/8)
	for k := range rows {
		r := binary.LittleEndian.Uint64(raw[8*k:])
		off := RowOffset(r)
		if off < lo || off >= hi || RowRule(r) >= nrules || (k > 0 && off <= RowOffset(rows[k-1])) || (k == 0 && off != lo) {
			return nil, false
		}
		rows[k] = r
	}
	return rows, true
}

// Rebase turns the decoded pages' rows into kernel rows against d (rewritten in place): the
// entry's few rules are interned once, and pages taken later are rebased the same way.
func (e *Entry) Rebase(d *Dict) error {
	d.mu.Lock()
	e.global = make([]uint32, len(e.Rules))
	for i, r := range e.Rules {
		g, err := d.intern(r)
		if err != nil {
			d.mu.Unlock()
			e.global = nil
			return err
		}
		e.global[i] = g
	}
	d.mu.Unlock()
	for _, rows := range e.Pages {
		e.rebase(rows)
	}
	return nil
}

func (e *Entry) rebase(rows []uint64) {
	for i, r := range rows {
		rows[i] = Row(RowOffset(r), e.global[RowRule(r)])
	}
}

// Cold lists the pages not decoded yet.
func (e *Entry) Cold() []uint32 { return slices.Sorted(maps.Keys(e.cold)) }

// TakeCold decodes a page no stack asked for before, as kernel rows (after Rebase); false when
// it is not in the entry or does not check out.
func (e *Entry) TakeCold(pg uint32) ([]uint64, bool) {
	raw, ok := e.cold[pg]
	if !ok || e.global == nil {
		return nil, false
	}
	delete(e.cold, pg)
	rows, ok := decodeRows(raw, pg, uint32(len(e.Rules)))
	if !ok {
		return nil, false
	}
	e.rebase(rows)
	return rows, true
}

// NewEntry spells kernel rows (indexes into d) as a cache entry with rules of its own.
func NewEntry(pages map[uint32][]uint64, hot map[uint32]bool, d *Dict) *Entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := &Entry{Pages: make(map[uint32][]uint64, len(pages)), Hot: hot}
	local := map[uint32]uint32{}
	for pg, rows := range pages {
		out := make([]uint64, 0, len(rows))
		for _, r := range rows {
			g := RowRule(r)
			if int(g) >= len(d.rules) {
				continue
			}
			l, ok := local[g]
			if !ok {
				l = uint32(len(e.Rules))
				local[g] = l
				e.Rules = append(e.Rules, d.rules[g])
			}
			out = append(out, Row(RowOffset(r), l))
		}
		if len(out) > 0 {
			e.Pages[pg] = out
		}
	}
	return e
}
