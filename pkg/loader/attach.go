package loader

import (
	"fmt"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/udstrace/udstrace/pkg/event"
)

// attachKernel attaches the syscall programs (raw tracepoints: bpf/syscalls.h says why) and the
// process life-cycle hooks (thread names included). Count mode traces no memory syscall results: no sys_exit.
func (t *Tracer) attachKernel() error {
	o := &t.objs
	progs := []*ebpf.Program{o.SysEnter, o.OnExec, o.OnFork, o.OnExit, o.OnRename}
	if !t.count {
		progs = append(progs, o.SysExit)
	}
	for _, p := range progs {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			return fmt.Errorf("attaching %s: %w", p, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// FileKey identifies a file by device and inode, the way uprobes do.
func FileKey(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d:%d", unixMajor(st.Dev), unixMinor(st.Dev), st.Ino), nil
}

func unixMajor(dev uint64) uint64 { return (dev >> 8) & 0xfff }
func unixMinor(dev uint64) uint64 { return (dev & 0xff) | ((dev >> 12) & 0xfff00) }

// AttachLibc places the allocator probes in one libc file; a file already attached is skipped.
// It returns the probes so stacks can name the allocator frame. path is where the file is
// opened and the probes placed: the tracer's own open descriptor of it (/proc/self/fd/N), so
// the probes land in the very file checked, whatever its name points to by then; name is what
// messages call it.
func (t *Tracer) AttachLibc(path, name string) ([]Probe, error) {
	key, err := FileKey(path)
	if err != nil {
		return nil, fmt.Errorf("attaching to %s: %w", name, err)
	}
	if probes, ok := t.attached[key]; ok {
		return probes, nil
	}
	probes := t.aheadFor(key)
	if prefix, named := t.named[key]; named {
		probes, err = FindNamedAllocator(path, prefix)
	} else if probes == nil {
		probes, err = FindAllocator(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the allocator of %s: %w", name, err)
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s for uprobes: %w", name, err)
	}
	// free gets the entry program alone; an allocator's own frees (dallocx, operator delete) the
	// entry and return pair, which keeps the frees they make inside from counting twice. Count
	// mode traces no frees.
	var allocOffs, allocCookies, freeOffs []uint64
	for _, p := range probes {
		if p.Kind == event.Free {
			freeOffs = append(freeOffs, p.Offset)
			continue
		}
		if p.Kind.IsFree() && t.count {
			continue
		}
		allocOffs = append(allocOffs, p.Offset)
		allocCookies = append(allocCookies, uint64(p.Kind))
	}
	if len(freeOffs) == 0 {
		return nil, fmt.Errorf("attaching to %s: no free symbol", name)
	}
	if err := t.placeProbes(ex, allocOffs, allocCookies, freeOffs); err != nil {
		return nil, fmt.Errorf("attaching to %s: %w", name, err)
	}
	t.attached[key] = probes
	t.libcPaths[key] = name
	return probes, nil
}

// NameAllocator says the file of identity key is an allocator the user named (--allocator):
// AttachLibc then looks its functions up as prefix+name, in its symbol table too.
func (t *Tracer) NameAllocator(key, prefix string) {
	if t.named == nil {
		t.named = map[string]string{}
	}
	t.named[key] = prefix
}

func (t *Tracer) placeProbes(ex *link.Executable, allocOffs, cookies, freeOffs []uint64) error {
	o := &t.objs
	if t.count {
		return t.placeCountProbes(ex, allocOffs, cookies)
	}
	if t.multi {
		steps := []func() (link.Link, error){
			func() (link.Link, error) {
				return ex.UprobeMulti(nil, o.AllocEnter, &link.UprobeMultiOptions{Addresses: allocOffs, Cookies: cookies})
			},
			func() (link.Link, error) {
				return ex.UretprobeMulti(nil, o.AllocReturn, &link.UprobeMultiOptions{Addresses: allocOffs, Cookies: cookies})
			},
			func() (link.Link, error) {
				return ex.UprobeMulti(nil, o.FreeEnter, &link.UprobeMultiOptions{Addresses: freeOffs})
			},
		}
		for _, step := range steps {
			l, err := step()
			if err != nil {
				return err
			}
			t.links = append(t.links, l)
		}
		return nil
	}
	for i, off := range allocOffs {
		for _, ret := range []bool{false, true} {
			opts := &link.UprobeOptions{Address: off, Cookie: cookies[i]}
			var l link.Link
			var err error
			if ret {
				l, err = ex.Uretprobe("", o.AllocReturn, opts)
			} else {
				l, err = ex.Uprobe("", o.AllocEnter, opts)
			}
			if err != nil {
				return err
			}
			t.links = append(t.links, l)
		}
	}
	for _, off := range freeOffs {
		l, err := ex.Uprobe("", o.FreeEnter, &link.UprobeOptions{Address: off})
		if err != nil {
			return err
		}
		t.links = append(t.links, l)
	}
	return nil
}

// Attached reports the libc files probed so far, by identity.
func (t *Tracer) Attached() map[string]string { return t.libcPaths }

// AttachedProbes returns the probes placed in the libc with this identity.
func (t *Tracer) AttachedProbes(key string) []Probe { return t.attached[key] }

// AddTarget puts a process in scope; pending targets start being traced at their next exec.
func (t *Tracer) AddTarget(pid int, pendingExec bool) error {
	state := uint8(2)
	if pendingExec {
		state = 1
	}
	if err := t.objs.Targets.Put(uint32(pid), state); err != nil {
		return fmt.Errorf("adding target %d: %w", pid, err)
	}
	return nil
}

// RemoveTarget takes a process out of scope (it never exec'd, or it is being dropped).
func (t *Tracer) RemoveTarget(pid int) {
	_ = t.objs.Targets.Delete(uint32(pid))
}

// placeCountProbes attaches count mode's single entry program: no return probe, no free probe.
func (t *Tracer) placeCountProbes(ex *link.Executable, offs, cookies []uint64) error {
	if t.multi {
		l, err := ex.UprobeMulti(nil, t.objs.AllocCount, &link.UprobeMultiOptions{Addresses: offs, Cookies: cookies})
		if err != nil {
			return err
		}
		t.links = append(t.links, l)
		return nil
	}
	for i, off := range offs {
		l, err := ex.Uprobe("", t.objs.AllocCount, &link.UprobeOptions{Address: off, Cookie: cookies[i]})
		if err != nil {
			return err
		}
		t.links = append(t.links, l)
	}
	return nil
}

// UsesUprobeMulti reports whether probes go through uprobe_multi links (else one link per function).
func (t *Tracer) UsesUprobeMulti() bool { return t.multi }
