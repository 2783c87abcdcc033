package loader

import (
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestLoadEveryMode loads the BPF programs as each mode configures them: the verifier must
// accept every combination users can ask for.
func TestLoadEveryMode(t *testing.T) {
	testenv.NeedRoot(t)
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"table", Config{StackMode: StackTable}},
		{"fp", Config{StackMode: StackFP}},
		{"copy", Config{StackMode: StackCopy}},
		{"count", Config{StackMode: StackTable, Count: true}},
		{"count-fp", Config{StackMode: StackFP, Count: true}},
		{"sampled", Config{StackMode: StackTable, SampleBytes: 4096}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Debug = testing.Verbose()
			tr, err := Load(c.cfg)
			if err != nil {
				s := err.Error()
				if len(s) > 6000 {
					s = s[len(s)-6000:]
				}
				t.Fatal(s)
			}
			tr.Close()
		})
	}
}
