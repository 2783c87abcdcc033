package floor

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Offsets are the file offsets in libc the floor probes attach at: udstrace's own.
type Offsets struct {
	Malloc uint64 // malloc's entry (and, for three traps, its return probe)
	Free   uint64 // free's probe: udstrace moves it past `test %rdi,%rdi`, to where the kernel emulates
}

// Counts are the hits each program counted for the target process.
type Counts struct {
	MallocEnter, MallocReturn, FreeEnter uint64
}

// Floor is the loaded programs and their links; Close removes them.
type Floor struct {
	objs  floorObjects
	links []link.Link
}

// Attach loads the empty programs for process pid and attaches them to libc: a
// uprobe on malloc's entry and, with three, also a uretprobe on malloc and a
// uprobe on free. Each probe is set on pid alone (the kernel installs the
// breakpoint in that process only) and the programs also count only pid.
func Attach(libc string, pid int, off Offsets, three bool) (*Floor, error) {
	spec, err := loadFloor()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables[floorVarTargetTgid].Set(uint32(pid)); err != nil {
		return nil, fmt.Errorf("floor: setting target pid: %w", err)
	}
	f := &Floor{}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		return nil, fmt.Errorf("floor: loading BPF programs: %w", err)
	}
	ex, err := link.OpenExecutable(libc)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("floor: %w", err)
	}
	type probe struct {
		prog *ebpf.Program
		off  uint64
		ret  bool
	}
	probes := []probe{{f.objs.MallocEnter, off.Malloc, false}}
	if three {
		probes = append(probes, probe{f.objs.MallocReturn, off.Malloc, true}, probe{f.objs.FreeEnter, off.Free, false})
	}
	for _, p := range probes {
		opts := &link.UprobeOptions{Address: p.off, PID: pid}
		var l link.Link
		if p.ret {
			l, err = ex.Uretprobe("", p.prog, opts)
		} else {
			l, err = ex.Uprobe("", p.prog, opts)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("floor: attaching to %s+%#x: %w", libc, p.off, err)
		}
		f.links = append(f.links, l)
	}
	return f, nil
}

// Counts sums each program's per-CPU hit counters.
func (f *Floor) Counts() (Counts, error) {
	var c Counts
	for slot, dst := range []*uint64{&c.MallocEnter, &c.MallocReturn, &c.FreeEnter} {
		var perCPU []uint64
		if err := f.objs.Hits.Lookup(uint32(slot), &perCPU); err != nil {
			return c, fmt.Errorf("floor: reading counts: %w", err)
		}
		for _, n := range perCPU {
			*dst += n
		}
	}
	return c, nil
}

// Close detaches the probes and unloads the programs.
func (f *Floor) Close() error {
	var errs []error
	for _, l := range f.links {
		errs = append(errs, l.Close())
	}
	f.links = nil
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}
