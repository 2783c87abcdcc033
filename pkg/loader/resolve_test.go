package loader

import "testing"

func TestIsLibcName(t *testing.T) {
	for name, want := range map[string]bool{
		"libc.so.6": true, "/usr/lib/x86_64-linux-gnu/libc.so.6": true, "libc-2.31.so": true,
		"libc.musl-x86_64.so.1": true, "libc-client.so.2007e": false, "libcrypt.so.1": false, "libm.so.6": false,
	} {
		if got := IsLibcName(name); got != want {
			t.Errorf("IsLibcName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestResolveLibc(t *testing.T) {
	got, err := ResolveLibc("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	if !IsLibcName(got) {
		t.Errorf("ResolveLibc(/bin/ls) = %q, not a libc", got)
	}
	if _, err := ResolveLibc("/nonexistent"); err == nil {
		t.Error("ResolveLibc of a missing file succeeded")
	}
}
