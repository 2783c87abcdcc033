package procmaps

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// deepDir makes a directory 30 levels down: deeper than the 24 components the kernel's
// file_path walks, so a mapping there reaches user space with its last name alone.
func deepDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for i := range 30 {
		d = filepath.Join(d, "d"+string(rune('a'+i%26)))
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func kernelDev(t *testing.T, path string) (uint32, uint64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	maj, mnr := uint32((st.Dev>>8)&0xfff), uint32((st.Dev&0xff)|((st.Dev>>12)&0xfff00))
	return maj<<20 | mnr, st.Ino
}

// TestMappedByNameAfterExit is issue #12 item 1's hard case: a library mapped from a path too deep
// for the kernel to send, whose process is gone by the time the event is read. The library is
// found beside the program (dlopen through $ORIGIN) and through the program's RUNPATH, checked by
// device and inode; one that is nowhere to be found is said why.
func TestMappedByNameAfterExit(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("needs gcc")
	}
	deep := deepDir(t)
	bin, lib := filepath.Join(deep, "bin"), filepath.Join(deep, "lib")
	for _, d := range []string{bin, lib} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(deep, "p.c")
	if err := os.WriteFile(src, []byte("#include <unistd.h>\nint main(void) { pause(); return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(bin, "prog")
	if out, err := exec.Command(gcc, "-o", prog, src, "-Wl,-rpath,$ORIGIN/../lib").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	// Any ELF files will do as the libraries: what is checked is that the very file is found.
	beside, viaRunpath := filepath.Join(bin, "libbeside.so"), filepath.Join(lib, "librun.so.1")
	nowhere := filepath.Join(t.TempDir(), "libnowhere.so")
	for _, p := range []string{beside, viaRunpath, nowhere} {
		data, err := os.ReadFile(prog)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(prog)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	tb := New()
	defer tb.Close()
	if err := tb.Load(pid); err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait() // gone: no map_files, no /proc/PID/root

	for i, p := range []string{beside, viaRunpath} {
		dev, ino := kernelDev(t, p)
		tb.Map(pid, 0x10000000*uint64(i+1), 0x1000, 0, dev, ino, filepath.Base(p))
		m := tb.Module(KernelDevKey(dev, ino))
		if m == nil {
			t.Errorf("%s: not found after its process exited; failures %v", filepath.Base(p), tb.Failures())
			continue
		}
		if m.Path != p {
			t.Errorf("%s: module path %q, want %q", filepath.Base(p), m.Path, p)
		}
	}
	dev, ino := kernelDev(t, nowhere)
	tb.Map(pid, 0x40000000, 0x1000, 0, dev, ino, filepath.Base(nowhere))
	if m := tb.Module(KernelDevKey(dev, ino)); m != nil {
		t.Errorf("libnowhere.so found at %s", m.Path)
	}
	why := tb.Failures()["libnowhere.so"]
	if !strings.Contains(why, "only its name is known") || !strings.Contains(why, "exited") {
		t.Errorf("failure for libnowhere.so: %q, want it to say only the name was known and the process had exited", why)
	}
}
