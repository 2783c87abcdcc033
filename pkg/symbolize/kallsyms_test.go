package symbolize

import (
	"os"
	"path/filepath"
	"testing"
)

const kallsymsText = `ffffffff81000000 T _stext
ffffffff81000010 T startup_64
ffffffff8212eaf0 t unix_stream_sendmsg
ffffffff8212f000 T unix_stream_read_generic
ffffffff8212f800 d some_data
ffffffffc0001000 t nf_hook_thing	[nf_tables]
ffffffffc0002000 T other_mod_fn	[xfs]
0000000000000000 T hidden_when_not_root
`

// TestKallsymsFrames: return addresses are named at addr-1 (a call at a function's very end
// returns to the next one's start), with module names from [mod] and vmlinux otherwise.
func TestKallsymsFrames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kallsyms")
	if err := os.WriteFile(path, []byte(kallsymsText), 0o644); err != nil {
		t.Fatal(err)
	}
	k := NewKallsyms(path)
	got, err := k.Frames([]uint64{0xffffffff8212eb4e, 0xffffffff8212f000, 0xffffffffc0001010, 0xffffffffc0002004, 0x10})
	if err != nil {
		t.Fatal(err)
	}
	want := []KernelFrame{
		{Addr: 0xffffffff8212eb4e, Function: "unix_stream_sendmsg", Offset: 0x5e, Module: "vmlinux"},
		{Addr: 0xffffffff8212f000, Function: "unix_stream_sendmsg", Offset: 0x510, Module: "vmlinux"},
		{Addr: 0xffffffffc0001010, Function: "nf_hook_thing", Offset: 0x10, Module: "nf_tables"},
		{Addr: 0xffffffffc0002004, Function: "other_mod_fn", Offset: 4, Module: "xfs"},
		{Addr: 0x10, Module: "vmlinux"},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("frame %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := got[2].Symbol(); s != "nf_tables!nf_hook_thing+0x10" {
		t.Errorf("symbol = %q", s)
	}
	if s := got[4].Symbol(); s != "0x10" {
		t.Errorf("unnamed symbol = %q", s)
	}
}
