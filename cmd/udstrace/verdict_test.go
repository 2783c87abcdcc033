package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

const socketpairSrc = `#include <sys/socket.h>
#include <unistd.h>
int main(void) {
	int sv[2];
	char b[4];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;
	if (write(sv[0], "abc", 3) != 3 || read(sv[1], b, 3) != 3) return 1;
	return 0;
}
`

// TestVerdictOnlyWithSocketTraffic: the socket-path verdict is drawn only where it means
// something. A command with no AF_UNIX socket call gets no verdict (no section, no conclusion;
// JSON applies false), one that talks over a socketpair gets it.
func TestVerdictOnlyWithSocketTraffic(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	pair := testenv.CompileC(t, "pair", socketpairSrc)
	for _, c := range []struct {
		cmd     []string
		applies bool
	}{
		{[]string{"true"}, false},
		{[]string{pair}, true},
	} {
		text, stderr, code := runCLI(t, bin, append([]string{"run", "--"}, c.cmd...)...)
		if code != exitOK {
			t.Fatalf("run -- %v: exit %d: %s", c.cmd, code, stderr)
		}
		if got := strings.Contains(text, "\nSOCKET PATH\n") && strings.Contains(text, "\nConclusion: "); got != c.applies {
			t.Errorf("run -- %v: text has the verdict %v, want %v:\n%s", c.cmd, got, c.applies, text)
		}
		js, stderr, code := runCLI(t, bin, append([]string{"run", "--format", "json", "--"}, c.cmd...)...)
		var rep struct {
			SocketPath struct {
				Applies    bool   `json:"applies"`
				Syscalls   uint64 `json:"syscalls"`
				Conclusion string `json:"conclusion"`
			} `json:"socket_path"`
		}
		if err := json.Unmarshal([]byte(js), &rep); err != nil || code != exitOK {
			t.Fatalf("run --format json -- %v: exit %d, %v: %s", c.cmd, code, err, stderr)
		}
		sp := rep.SocketPath
		if sp.Applies != c.applies || (sp.Conclusion != "") != c.applies || (sp.Syscalls > 0) != c.applies {
			t.Errorf("run -- %v: socket_path %+v, want applies %v", c.cmd, sp, c.applies)
		}
	}
}
