package launch

import (
	"bytes"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestHelperArgsRoundTrip(t *testing.T) {
	for _, c := range []struct {
		argv []string
		opts Options
		want helperCommand
	}{
		{[]string{"ls"}, Options{}, helperCommand{argv: []string{"ls"}}},
		{[]string{"gcc", "-c", "x.c"}, Options{Path: "/usr/bin/gcc", NoASLR: true},
			helperCommand{argv: []string{"gcc", "-c", "x.c"}, path: "/usr/bin/gcc", noASLR: true}},
		{[]string{"srv"}, Options{Pinned: &FileID{Dev: 1, Ino: 2, Owner: 3}, Path: "/w/srv"},
			helperCommand{argv: []string{"srv"}, path: "/w/srv", pin: "1:2:3"}},
	} {
		args := helperArgs(c.argv, c.opts)
		if args[0] != helperArg {
			t.Fatalf("%q: does not start with the helper's mark", args)
		}
		if got := parseHelperArgs(args[1:]); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: parsed %+v, want %+v", args, got, c.want)
		}
	}
}

// run starts argv with opts, lets it run to its end and returns what it wrote.
func run(t *testing.T, argv []string, opts Options) string {
	t.Helper()
	var out bytes.Buffer
	opts.Stdout, opts.Stderr = &out, os.Stderr
	p, err := Start(argv, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Release(); err != nil {
		p.Abort()
		t.Fatal(err)
	}
	if ws, _, err := p.Wait(nil, nil, 0); err != nil || ws.ExitStatus() != 0 {
		t.Fatalf("%v: %v, status %v", argv, err, ws)
	}
	return out.String()
}

// TestStartKeepsArgv0: with Path, the file runs under the argv[0] it was given (the kernel's
// /proc/PID/cmdline is the oracle), as a shell would run it.
func TestStartKeepsArgv0(t *testing.T) {
	got := run(t, []string{"some-name", "/proc/self/cmdline"}, Options{Path: "/bin/cat"})
	if got != "some-name\x00/proc/self/cmdline\x00" {
		t.Errorf("cmdline %q, want argv[0] some-name", got)
	}
}

// TestStartNoASLR: NoASLR sets ADDR_NO_RANDOMIZE in the command's personality (the kernel's
// /proc/PID/personality), and only then.
func TestStartNoASLR(t *testing.T) {
	persona := func(s string) uint64 {
		v, err := strconv.ParseUint(strings.TrimSpace(s), 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	self, err := os.ReadFile("/proc/self/personality")
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{"cat", "/proc/self/personality"}
	if got := persona(run(t, argv, Options{NoASLR: true})); got != persona(string(self))|addrNoRandomize {
		t.Errorf("with NoASLR: personality %#x, want %#x", got, persona(string(self))|addrNoRandomize)
	}
	if got := persona(run(t, argv, Options{})); got != persona(string(self)) {
		t.Errorf("without: personality %#x, want udstrace's own %#x", got, persona(string(self)))
	}
}
