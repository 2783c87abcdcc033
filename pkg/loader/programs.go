package loader

import (
	"cmp"
	"reflect"

	"github.com/cilium/ebpf"
)

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
// also, in full mode, loads more programs (the kmem ones) at the same time, into the same maps.
func loadMode(spec *ebpf.CollectionSpec, count bool, opts *ebpf.CollectionOptions, o *udstraceObjects, also func(*ebpf.CollectionOptions) error) error {
	if count {
		var c countObjects
		if err := spec.LoadAndAssign(&c, opts); err != nil {
			return err
		}
		o.udstraceMaps, o.udstraceVariables, o.AllocCount = c.udstraceMaps, c.udstraceVariables, c.AllocCount
		set(o, c.commonPrograms)
		return nil
	}
	return loadFull(spec, opts, o, also)
}

// The two programs that reach the stack code are most of the verifier's time (~55 ms each
// here, the other seven 35 ms together); full mode loads them and the rest at once, one load
// each, into maps created first: 175 ms of loading became about 100 on two cores.
type allocReturnProgram struct {
	AllocReturn *ebpf.Program `ebpf:"alloc_return"`
}

type sysExitProgram struct {
	SysExit *ebpf.Program `ebpf:"sys_exit"`
}

type fullOtherPrograms struct {
	commonPrograms
	AllocEnter *ebpf.Program `ebpf:"alloc_enter"`
	FreeEnter  *ebpf.Program `ebpf:"free_enter"`
}

// loadFull creates the maps, then loads full mode's programs in two halves at once against them.
func loadFull(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, o *udstraceObjects, also func(*ebpf.CollectionOptions) error) error {
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	coll, err := ebpf.NewCollectionWithOptions(mapsOnly, *opts)
	if err != nil {
		return err
	}
	defer coll.Close() // what Assign did not take
	var mv struct {
		udstraceMaps
		udstraceVariables
	}
	if err := coll.Assign(&mv); err != nil {
		return err
	}
	withMaps := *opts
	withMaps.MapReplacements = map[string]*ebpf.Map{}
	for name, m := range coll.Maps {
		withMaps.MapReplacements[name] = m
	}
	for name, m := range mapsByName(&mv.udstraceMaps) {
		withMaps.MapReplacements[name] = m
	}
	var ret allocReturnProgram
	var exit sysExitProgram
	var other fullOtherPrograms
	errRet, errExit := make(chan error, 1), make(chan error, 1)
	go func() { errRet <- spec.Copy().LoadAndAssign(&ret, &withMaps) }()
	go func() { errExit <- spec.Copy().LoadAndAssign(&exit, &withMaps) }()
	errAlso := make(chan error, 1)
	go func() {
		var err error
		if also != nil {
			err = also(&withMaps)
		}
		errAlso <- err
	}()
	errOther := spec.Copy().LoadAndAssign(&other, &withMaps)
	// One cause, as a load of all at once would give it (a damaged BTF fails all three alike).
	if err := cmp.Or(errOther, <-errRet, <-errExit, <-errAlso); err != nil {
		mv.udstraceMaps.Close()
		closeAll(ret.AllocReturn, exit.SysExit, other.AllocEnter, other.FreeEnter,
			other.SysEnter, other.OnExec, other.OnFork, other.OnExit, other.OnRename)
		return err
	}
	o.udstraceMaps, o.udstraceVariables = mv.udstraceMaps, mv.udstraceVariables
	o.AllocEnter, o.AllocReturn, o.FreeEnter, o.SysExit = other.AllocEnter, ret.AllocReturn, other.FreeEnter, exit.SysExit
	set(o, other.commonPrograms)
	return nil
}

func set(o *udstraceObjects, c commonPrograms) {
	o.SysEnter, o.OnExec, o.OnFork, o.OnExit, o.OnRename = c.SysEnter, c.OnExec, c.OnFork, c.OnExit, c.OnRename
}

// closeAll closes the programs a half-failed load made.
func closeAll(progs ...*ebpf.Program) {
	for _, p := range progs {
		if p != nil {
			p.Close()
		}
	}
}

// mapsByName lists m's maps by their BPF names (the struct's ebpf tags), for MapReplacements.
func mapsByName(m *udstraceMaps) map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		if name := v.Type().Field(i).Tag.Get("ebpf"); name != "" {
			out[name] = v.Field(i).Interface().(*ebpf.Map)
		}
	}
	return out
}
