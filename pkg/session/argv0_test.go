package session

import (
	"bytes"
	"context"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestRunKeepsArgv0: run -- cat runs cat as a shell would, argv[0] "cat", not the path it was
// found at (gcc derives the paths it gives collect2 from its argv[0], so a traced gcc behaved
// differently from an untraced one); the report still names the file exec'd.
func TestRunKeepsArgv0(t *testing.T) {
	testenv.NeedRoot(t)
	var out bytes.Buffer
	o := testOptions(t)
	o.Command, o.Stdout = []string{"cat", "/proc/self/cmdline"}, &out
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "cat\x00/proc/self/cmdline\x00" {
		t.Errorf("the traced command's cmdline is %q, want argv[0] cat as given", got)
	}
	if len(rep.Processes) != 1 || rep.Processes[0].Exe == "" || rep.Processes[0].Exe[0] != '/' {
		t.Errorf("processes %+v: want one, its exe the absolute path exec'd", rep.Processes)
	}
}
