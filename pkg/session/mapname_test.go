package session

import "testing"

// TestMapName: the path of a /proc/PID/maps line is what follows its five fields, spaces kept.
func TestMapName(t *testing.T) {
	for line, want := range map[string]string{
		"7f0e1c000000-7f0e1c028000 r--p 00000000 fe:01 1835   /usr/lib/x86_64-linux-gnu/libc.so.6": "/usr/lib/x86_64-linux-gnu/libc.so.6",
		"7f0e1c000000-7f0e1c028000 r-xp 00028000 fe:01 99 /tmp/prog  name":                         "/tmp/prog  name",
		"7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0":                                          "",
		"garbage": "",
	} {
		if got := mapName(line); got != want {
			t.Errorf("mapName(%q) = %q, want %q", line, got, want)
		}
	}
}
