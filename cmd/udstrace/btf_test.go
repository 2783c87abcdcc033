package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestDamagedBTF: with /sys/kernel/btf/vmlinux truncated or empty (bind-mounted over, in a
// private mount namespace), udstrace says in one line that the kernel's type information is
// unreadable and what it needs, not cilium/ebpf's "apply CO-RE relocations: … buffer too small".
func TestDamagedBTF(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildCLI(t)
	btf, err := os.ReadFile(btfPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"truncated": btf[:4096], "empty": nil} {
		t.Run(name, func(t *testing.T) {
			fake := filepath.Join(dir, name)
			os.WriteFile(fake, data, 0o444)
			cmd := exec.Command("unshare", "-m", "sh", "-c", `mount --bind "$1" `+btfPath+` && exec "$2" run -- true`, "sh", fake, bin)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != exitFailure {
				t.Fatalf("%v, output %q: want exit %d", err, out, exitFailure)
			}
			msg := string(out)
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "cannot read the kernel's type information") ||
				!strings.Contains(msg, "CONFIG_DEBUG_INFO_BTF") || strings.Contains(msg, "CO-RE") {
				t.Errorf("stderr %q: want one line in user words naming BTF and what udstrace needs", msg)
			}
			assertClean(t, bin)
		})
	}
}
