package session

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/udstrace/udstrace/internal/safeopen"
	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/symbolize"
)

// TestExecChainModules: `#!/usr/bin/env bash` scripts that exec each other, the last one
// `exec /usr/bin/env bash -c ...`, so one pid runs env, bash, env, bash, ... each image allocating
// right after the exec that replaced the one before (issue #12 item 2: bash's frames were labelled
// /usr/bin/env when an exec event was read after the process had exec'd again). Every frame's
// module must be the file its build-id says, in every stack mode. The race needs load to show;
// pkg/procmaps' TestLateExecNamesItsOwnImage is its deterministic half.
func TestExecChainModules(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const links = 4
	for i := range links {
		next := fmt.Sprintf("exec %s", filepath.Join(dir, fmt.Sprintf("s%d.sh", i+1)))
		if i == links-1 {
			next = `exec /usr/bin/env bash -c 'x=$(echo hi); echo "$x" >/dev/null'`
		}
		body := fmt.Sprintf("#!/usr/bin/env bash\ny=$(echo %d)\n%s\n", i, next)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("s%d.sh", i)), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]string{}
	buildID := func(path string) string {
		if id, ok := ids[path]; ok {
			return id
		}
		id := ""
		if f, err := safeopen.Open(path, safeopen.Options{Follow: true}); err == nil {
			if st, err := f.Stat(); err == nil {
				if b, err := symbolize.Open(f, st.Size(), symbolize.Options{Path: path}); err == nil {
					id = b.BuildID()
				}
			}
			f.Close()
		}
		ids[path] = id
		return id
	}
	for _, mode := range []string{"auto", "cfi", "fp"} {
		t.Run(mode, func(t *testing.T) {
			repeatRuns(t, func(t *testing.T) {
				o := testOptions(t)
				o.Stack = mode
				o.Command = []string{filepath.Join(dir, "s0.sh")}
				rep, err := Run(context.Background(), o)
				if err != nil {
					t.Fatal(err)
				}
				checked, bashFrames := 0, 0
				for _, s := range rep.Sites {
					for i, f := range s.Stack {
						if f.Module == "" || f.Module[0] != '/' || f.BuildID == "" {
							continue
						}
						checked++
						if filepath.Base(f.Module) == "bash" {
							bashFrames++
						}
						if got := buildID(f.Module); got != f.BuildID {
							t.Errorf("site %d (pid %d %s) frame %d %s: module %s has build-id %s, the frame %s",
								s.ID, s.PID, s.Comm, i, f.Symbol, f.Module, got, f.BuildID)
						}
					}
				}
				if checked == 0 || bashFrames == 0 {
					t.Errorf("%d frames with a module and build-id, %d in bash: want bash's allocations with named frames", checked, bashFrames)
				}
				if t.Failed() {
					keepReport(t, rep)
				}
				t.Logf("%d frames checked, %d in bash; %d sites", checked, bashFrames, len(rep.Sites))
			})
		})
	}
}
