package loader

import "github.com/cilium/ebpf"

// Each program that reaches the stack code (bpf/stack.h) costs the verifier ~150 ms at start, so
// a trace loads only its mode's programs: full mode the allocator entry, return and free probes
// and the syscall exit; count mode the one counting probe. The maps and the rest are shared.

type commonPrograms struct {
	SysEnter *ebpf.Program `ebpf:"sys_enter"`
	OnExec   *ebpf.Program `ebpf:"on_exec"`
	OnFork   *ebpf.Program `ebpf:"on_fork"`
	OnExit   *ebpf.Program `ebpf:"on_exit"`
	OnRename *ebpf.Program `ebpf:"on_rename"`
}

type fullObjects struct {
	udstraceMaps
	udstraceVariables
	commonPrograms
	AllocEnter  *ebpf.Program `ebpf:"alloc_enter"`
	AllocReturn *ebpf.Program `ebpf:"alloc_return"`
	FreeEnter   *ebpf.Program `ebpf:"free_enter"`
	SysExit     *ebpf.Program `ebpf:"sys_exit"`
}

type countObjects struct {
	udstraceMaps
	udstraceVariables
	commonPrograms
	AllocCount *ebpf.Program `ebpf:"alloc_count"`
}

// loadMode loads the maps and the programs of one mode into o; the other mode's programs stay nil.
func loadMode(spec *ebpf.CollectionSpec, count bool, opts *ebpf.CollectionOptions, o *udstraceObjects) error {
	set := func(c commonPrograms) {
		o.SysEnter, o.OnExec, o.OnFork, o.OnExit, o.OnRename = c.SysEnter, c.OnExec, c.OnFork, c.OnExit, c.OnRename
	}
	if count {
		var c countObjects
		if err := spec.LoadAndAssign(&c, opts); err != nil {
			return err
		}
		o.udstraceMaps, o.udstraceVariables, o.AllocCount = c.udstraceMaps, c.udstraceVariables, c.AllocCount
		set(c.commonPrograms)
		return nil
	}
	var f fullObjects
	if err := spec.LoadAndAssign(&f, opts); err != nil {
		return err
	}
	o.udstraceMaps, o.udstraceVariables = f.udstraceMaps, f.udstraceVariables
	o.AllocEnter, o.AllocReturn, o.FreeEnter, o.SysExit = f.AllocEnter, f.AllocReturn, f.FreeEnter, f.SysExit
	set(f.commonPrograms)
	return nil
}
