package report

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// The sites are nearly all of a large report (a compile's 12,000 sites carry 270,000 frames, 120
// MB of JSON), and encoding/json spends most of its time there in reflection and a second pass to
// indent: ~0.6 s after the traced command ended. appendSite writes a site by hand instead, byte
// for byte what encoding/json's indenting encoder writes (FuzzSiteJSON compares the two).

// siteWriter appends indented JSON: every line starts with prefix and one indent per depth.
type siteWriter struct {
	b      []byte
	prefix string
	indent string
	depth  int
	first  bool // no member written yet at this depth
}

func (w *siteWriter) newline() {
	w.b = append(w.b, '\n')
	w.b = append(w.b, w.prefix...)
	for range w.depth {
		w.b = append(w.b, w.indent...)
	}
}

func (w *siteWriter) open(c byte) {
	w.b = append(w.b, c)
	w.depth++
	w.first = true
}

func (w *siteWriter) close(c byte) {
	w.depth--
	if !w.first {
		w.newline()
	}
	w.b = append(w.b, c)
	w.first = false
}

// member starts an array element, or an object member named key.
func (w *siteWriter) member(key string) {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
	w.newline()
	if key != "" {
		w.b = append(w.b, '"')
		w.b = append(w.b, key...)
		w.b = append(w.b, `": `...)
	}
}

func (w *siteWriter) uint(key string, v uint64) {
	w.member(key)
	w.b = strconv.AppendUint(w.b, v, 10)
}

func (w *siteWriter) int(key string, v int64) {
	w.member(key)
	w.b = strconv.AppendInt(w.b, v, 10)
}

func (w *siteWriter) str(key, v string) {
	w.member(key)
	w.b = appendJSONString(w.b, v)
}

func (w *siteWriter) hex(key string, v Hex) {
	w.member(key)
	w.b = append(w.b, `"0x`...)
	w.b = strconv.AppendUint(w.b, uint64(v), 16)
	w.b = append(w.b, '"')
}

func (w *siteWriter) bool(key string, v bool) {
	w.member(key)
	w.b = strconv.AppendBool(w.b, v)
}

// float writes v as encoding/json does (ES6 number formatting).
func (w *siteWriter) float(key string, v float64) {
	w.member(key)
	f := byte('f')
	if a := math.Abs(v); a != 0 && (a < 1e-6 || a >= 1e21) {
		f = 'e'
	}
	w.b = strconv.AppendFloat(w.b, v, f, -1, 64)
	if n := len(w.b); f == 'e' && n >= 4 && w.b[n-4] == 'e' && w.b[n-3] == '-' && w.b[n-2] == '0' {
		w.b[n-2] = w.b[n-1]
		w.b = w.b[:n-1]
	}
}

// appendSite appends s as encoding/json's Encoder with SetIndent(prefix, indent) and
// SetEscapeHTML(false) writes it, without the trailing newline. ok is false for a value JSON
// cannot hold (a NaN or infinite age), which the caller then leaves to encoding/json's error.
func appendSite(dst []byte, s *Site, prefix, indent string) (out []byte, ok bool) {
	if math.IsNaN(s.OldestOutstandingAgeSeconds) || math.IsInf(s.OldestOutstandingAgeSeconds, 0) {
		return dst, false
	}
	w := siteWriter{b: dst, prefix: prefix, indent: indent}
	w.open('{')
	w.int("id", int64(s.ID))
	w.uint("pid", uint64(s.PID))
	w.str("comm", s.Comm)
	w.str("kind", s.Kind)
	w.uint("count", s.Count)
	w.uint("failed", s.Failed)
	w.uint("bytes", s.Bytes)
	if !s.notTraced {
		w.uint("outstanding_count", s.OutstandingCount)
		w.uint("outstanding_bytes", s.OutstandingBytes)
	}
	if s.Stack == nil {
		w.member("stack")
		w.b = append(w.b, "null"...)
	} else {
		w.member("stack")
		w.open('[')
		for i := range s.Stack {
			f := &s.Stack[i]
			w.member("")
			w.open('{')
			w.int("frame", int64(f.Frame))
			w.hex("addr", f.Addr)
			w.str("module", f.Module)
			w.str("build_id", f.BuildID)
			w.hex("file_offset", f.FileOffset)
			w.str("symbol", f.Symbol)
			w.str("function", f.Function)
			w.uint("offset", f.Offset)
			w.str("file", f.File)
			w.int("line", int64(f.Line))
			w.bool("inlined", f.Inlined)
			w.bool("tail_call", f.TailCall)
			w.close('}')
		}
		w.close(']')
	}
	if !s.notTraced {
		w.float("oldest_outstanding_age_seconds", s.OldestOutstandingAgeSeconds)
		w.member("outstanding_older_than_min_age")
		w.open('{')
		w.uint("count", s.OutstandingOlderThanMinAge.Count)
		w.uint("bytes", s.OutstandingOlderThanMinAge.Bytes)
		w.close('}')
	}
	if s.FoldedSites != 0 {
		w.int("folded_sites", int64(s.FoldedSites))
	}
	if s.FileBacked {
		w.bool("file_backed", true)
	}
	if s.TID != 0 {
		w.uint("tid", uint64(s.TID))
	}
	if s.Thread != "" {
		w.str("thread", s.Thread)
	}
	if s.Threads != 0 {
		w.int("threads", int64(s.Threads))
	}
	w.close('}')
	return w.b, true
}

// appendJSONString appends s quoted as encoding/json writes it with HTML escaping off: quote,
// backslash and control characters escaped, invalid UTF-8 as U+FFFD, U+2028 and U+2029 escaped.
func appendJSONString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
