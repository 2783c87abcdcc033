package loader

import "testing"

func TestJoinPath(t *testing.T) {
	raw := func(s string) []int8 {
		out := make([]int8, 64)
		for i := range s {
			out[i] = int8(s[i])
		}
		return out
	}
	for in, want := range map[string]string{
		"libc.so.6\x00x86_64-linux-gnu\x00lib\x00usr\x00\x00": "/usr/lib/x86_64-linux-gnu/libc.so.6",
		"init\x00\x00": "/init",
		"\x00":         "/",
	} {
		if got := joinPath(raw(in)); got != want {
			t.Errorf("joinPath(%q) = %q, want %q", in, got, want)
		}
	}
}
