package probeplace

import (
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// Hand-assembled x86-64 encodings (AT&T in the names).
var (
	testRdiRdi   = []byte{0x48, 0x85, 0xff}             // test %rdi,%rdi
	je32         = []byte{0x0f, 0x84, 0xbf, 0, 0, 0}    // je rel32
	je8          = []byte{0x74, 0x05}                   // je rel8
	jmp8         = []byte{0xeb, 0x00}                   // jmp rel8
	callRel32    = []byte{0xe8, 0, 0, 0, 0}             // call rel32
	pushRbp      = []byte{0x55}                         // push %rbp
	pushR12      = []byte{0x41, 0x54}                   // push %r12
	pushRbpRexW  = []byte{0x48, 0x55}                   // rex.W push %rbp (not emulated)
	movRaxRdi    = []byte{0x48, 0x89, 0xc7}             // mov %rax,%rdi
	movRsiRax    = []byte{0x48, 0x89, 0xf0}             // mov %rsi,%rax
	movRaxRsi    = []byte{0x48, 0x89, 0xc6}             // mov %rax,%rsi
	mulRdx       = []byte{0x48, 0xf7, 0xe2}             // mul %rdx
	mulCl        = []byte{0xf6, 0xe1}                   // mul %cl (writes only %ax)
	jo8          = []byte{0x70, 0x05}                   // jo rel8
	subRsp8      = []byte{0x48, 0x83, 0xec, 0x08}       // sub $8,%rsp
	cmpRdiRsi    = []byte{0x48, 0x39, 0xf7}             // cmp %rsi,%rdi
	cmpbRip      = []byte{0x80, 0x3d, 1, 2, 3, 4, 0}    // cmpb $0,0x4030201(%rip)
	cmpbRdiMem   = []byte{0x80, 0x3f, 0x00}             // cmpb $0,(%rdi)
	xorEdiEdi    = []byte{0x31, 0xff}                   // xor %edi,%edi
	movDil       = []byte{0x40, 0xb7, 0x00}             // mov $0,%dil
	nop1         = []byte{0x90}                         // nop
	nopl4        = []byte{0x0f, 0x1f, 0x40, 0x00}       // nopl 0(%rax)
	nopw6        = []byte{0x66, 0x0f, 0x1f, 0x44, 0, 0} // nopw (not in our emulated table)
	xchgR8       = []byte{0x41, 0x90}                   // xchg %eax,%r8d (0x90 but not a nop)
	endbr64      = []byte{0xf3, 0x0f, 0x1e, 0xfa}       // endbr64
	popRbx       = []byte{0x5b}                         // pop %rbx
	cpuid        = []byte{0x0f, 0xa2}                   // cpuid
	lockAdd      = []byte{0xf0, 0x48, 0x01, 0x05, 0, 0, 0, 0}
	repStosb     = []byte{0xf3, 0xaa} // rep stos
	movFsRax     = []byte{0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0}
	ret          = []byte{0xc3}
	padding      = []byte{0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc}
	rdi          = Spec{ArgRegs: []Reg{x86asm.RDI}}
	rdiRsiRdx    = Spec{ArgRegs: []Reg{x86asm.RDI, x86asm.RSI, x86asm.RDX}}
	noTargets    = map[uint64]bool{}
	reallocarray = cat(movRsiRax, mulRdx, movRaxRsi, jo8, jmp8)
)

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return append(b, padding...)
}

func repeat(p []byte, n int) [][]byte {
	var out [][]byte
	for range n {
		out = append(out, p)
	}
	return out
}

func TestChoose(t *testing.T) {
	for _, tc := range []struct {
		name     string
		code     []byte
		spec     Spec
		targets  map[uint64]bool
		offset   uint64
		emulated bool
		reason   string // substring of Reason
	}{
		{"test je32 (free)", cat(testRdiRdi, je32, pushRbp), rdi, noTargets, 3, true, "moved past +0 test"},
		{"test je8", cat(testRdiRdi, je8), rdi, noTargets, 3, true, "rel8 jump"},
		{"test je, targets unknown", cat(testRdiRdi, je32), rdi, nil, 3, true, ""},
		{"push at entry (malloc)", cat(pushR12, pushRbp), rdi, noTargets, 0, true, "+0 push %r12"},
		{"REX push r12 after test", cat(testRdiRdi, pushR12), rdi, noTargets, 3, true, "register push"},
		{"REX.W push is not emulated and writes rsp", cat(pushRbpRexW, pushRbp), rdi, noTargets, 0, false, "%rsp"},
		{"mov writes arg reg", cat(movRaxRdi, pushRbp), rdi, noTargets, 0, false, "writes %rdi"},
		{"mov writes non-arg reg", cat(movRaxRdi, pushRbp), Spec{ArgRegs: []Reg{x86asm.RSI}}, noTargets, 3, true, ""},
		{"mov, targets unknown", cat(movRsiRax, pushRbp), rdi, nil, 0, false, "only test/cmp"},
		{"xor edi clobbers rdi", cat(xorEdiEdi, pushRbp), rdi, noTargets, 0, false, "writes %rdi"},
		{"mov dil clobbers rdi", cat(movDil, pushRbp), rdi, noTargets, 0, false, "writes %rdi"},
		{"sub rsp", cat(subRsp8, pushRbp), Spec{}, noTargets, 0, false, "writes %rsp"},
		{"pop", cat(popRbx, pushRbp), Spec{}, noTargets, 0, false, "%rsp"},
		{"cmp jmp", cat(cmpRdiRsi, jmp8), rdi, noTargets, 3, true, "rel8 jump"},
		{"cmp jmp, jmp is a branch target", cat(cmpRdiRsi, jmp8), rdi, map[uint64]bool{3: true}, 0, false, "targets +3"},
		{"branch into the middle of the prefix", cat(cmpRdiRsi, jmp8), rdi, map[uint64]bool{2: true}, 0, false, "targets +2"},
		{"branch to +0 is fine", cat(cmpRdiRsi, jmp8), rdi, map[uint64]bool{0: true, 64: true}, 3, true, ""},
		{"nop at entry", cat(nop1, pushRbp), rdi, noTargets, 0, true, "a nop"},
		{"nopl after test", cat(testRdiRdi, nopl4), rdi, noTargets, 3, true, "multi-byte nop"},
		{"66 nopw is skipped, not chosen", cat(testRdiRdi, nopw6, pushRbp), rdi, noTargets, 9, true, "register push"},
		{"41 90 is xchg, not nop", cat(xchgR8, pushRbp), rdi, noTargets, 2, true, ""},
		{"41 90 is xchg and writes rax", cat(xchgR8, pushRbp), Spec{ArgRegs: []Reg{x86asm.EAX}}, noTargets, 0, false, "writes %rax"},
		{"endbr64 then push", cat(endbr64, pushRbp), rdi, noTargets, 4, true, "endbr"},
		{"endbr64, targets unknown", cat(endbr64, pushRbp), rdi, nil, 0, false, "only test/cmp"},
		{"cmpb rip (posix_memalign)", cat(cmpbRip, pushR12), rdiRsiRdx, noTargets, 7, true, "cmpb"},
		{"cmpb rip, targets unknown", cat(cmpbRip, je8), rdiRsiRdx, nil, 7, true, ""},
		{"cmpb through pointer may fault", cat(cmpbRdiMem, pushRbp), rdi, noTargets, 0, false, "may fault"},
		{"reallocarray: mul writes rdx", reallocarray, rdiRsiRdx, noTargets, 0, false, "mul %rdx"},
		{"reallocarray: mov writes rsi", reallocarray, Spec{ArgRegs: []Reg{x86asm.RSI}}, noTargets, 0, false, "writes %rsi"},
		{"mul only matters for rax/rdx", reallocarray, rdi, noTargets, 9, true, "jo"},
		{"8-bit mul leaves rdx", cat(mulCl, pushRbp), Spec{ArgRegs: []Reg{x86asm.RDX}}, noTargets, 2, true, ""},
		{"8-bit mul writes ax", cat(mulCl, pushRbp), Spec{ArgRegs: []Reg{x86asm.RAX}}, noTargets, 0, false, "writes %rax"},
		{"call after test", cat(testRdiRdi, callRel32), rdi, noTargets, 3, true, "rel32 call"},
		{"ret", cat(ret, pushRbp), rdi, noTargets, 0, false, "control transfer"},
		{"cpuid", cat(cpuid, pushRbp), Spec{}, noTargets, 0, false, "not on the list"},
		{"lock", cat(lockAdd, pushRbp), Spec{}, noTargets, 0, false, "LOCK"},
		{"rep", cat(repStosb, pushRbp), Spec{}, noTargets, 0, false, "REP"},
		{"fs segment", cat(movFsRax, pushRbp), Spec{}, noTargets, 0, false, "segment"},
		{"7 instructions then push", cat(append(repeat(testRdiRdi, 7), pushRbp)...), rdi, noTargets, 21, true, ""},
		{"8 instructions then push", cat(append(repeat(testRdiRdi, 8), pushRbp)...), rdi, noTargets, 0, false, "8 instructions"},
		{"past 32 bytes", cat(append(repeat(cmpbRip, 5), pushRbp)...), rdi, noTargets, 0, false, "32 bytes"},
		{"4 cmpb then push at 28", cat(append(repeat(cmpbRip, 4), pushRbp)...), rdi, noTargets, 28, true, ""},
		{"end of code", testRdiRdi, rdi, noTargets, 0, false, "end of the function"},
		{"truncated", append(append([]byte{}, testRdiRdi...), je32[:3]...), rdi, noTargets, 0, false, "decoding"},
		{"empty", nil, rdi, noTargets, 0, false, "no code"},
		{"unknown opcode", cat([]byte{0x0f, 0x0b}), rdi, noTargets, 0, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Choose(tc.code, tc.spec, tc.targets)
			if p.Offset != tc.offset || p.Emulated != tc.emulated || !strings.Contains(p.Reason, tc.reason) {
				t.Errorf("Choose = %+v, want offset %d emulated %v reason containing %q", p, tc.offset, tc.emulated, tc.reason)
			}
			checkInvariants(t, tc.code, tc.spec, tc.targets, p)
		})
	}
}

func TestFamily(t *testing.T) {
	for r, want := range map[Reg]Reg{
		x86asm.AL: x86asm.RAX, x86asm.AH: x86asm.RAX, x86asm.BH: x86asm.RBX, x86asm.SPB: x86asm.RSP,
		x86asm.DIB: x86asm.RDI, x86asm.R15B: x86asm.R15, x86asm.DI: x86asm.RDI, x86asm.EDI: x86asm.RDI,
		x86asm.R8L: x86asm.R8, x86asm.RDX: x86asm.RDX, x86asm.RIP: 0, x86asm.X0: 0,
	} {
		if got := family(r); got != want {
			t.Errorf("family(%v) = %v, want %v", r, got, want)
		}
	}
}

// checkInvariants re-derives what any placement must satisfy: the chosen
// instruction is emulated or the offset is 0, and the prefix obeys rules 2–4.
func checkInvariants(t *testing.T, code []byte, spec Spec, targets map[uint64]bool, p Placement) {
	t.Helper()
	if p.Reason == "" {
		t.Errorf("empty reason")
	}
	if p.Offset == 0 {
		in, err := decode(code)
		want := false
		if err == nil {
			want, _ = emulated(code[:in.Len])
		}
		if p.Emulated != want {
			t.Errorf("+0: Emulated = %v, want %v", p.Emulated, want)
		}
		return
	}
	if !p.Emulated || p.Offset >= maxBytes {
		t.Fatalf("placement %+v: a moved probe must be emulated and within %d bytes", p, maxBytes)
	}
	args := map[Reg]bool{}
	for _, r := range spec.ArgRegs {
		args[family(r)] = true
	}
	off, n := 0, 0
	for ; uint64(off) < p.Offset; n++ {
		in, err := decode(code[off:])
		if err != nil {
			t.Fatalf("+%d: %v", off, err)
		}
		raw := code[off : off+in.Len]
		if ok, _ := emulated(raw); ok {
			t.Errorf("+%d is emulated but the probe went further to +%d", off, p.Offset)
		}
		if why := unsafeToSkip(in, raw, args); why != "" {
			t.Errorf("+%d skipped but %s", off, why)
		}
		if isControl(in) || stackOps[in.Op] {
			t.Errorf("+%d skipped a control transfer or stack op", off)
		}
		if targets == nil && !flagsOnly(in) {
			t.Errorf("+%d skipped a non test/cmp with unknown targets", off)
		}
		off += in.Len
	}
	if uint64(off) != p.Offset {
		t.Errorf("offset %d is not on an instruction boundary", p.Offset)
	}
	if n >= maxInsns {
		t.Errorf("skipped %d instructions", n)
	}
	for o := uint64(1); o <= p.Offset; o++ {
		if targets[o] {
			t.Errorf("branch target +%d inside the skipped prefix", o)
		}
	}
	in, err := decode(code[off:])
	if err != nil {
		t.Fatalf("chosen +%d: %v", off, err)
	}
	if ok, _ := emulated(code[off : off+in.Len]); !ok {
		t.Errorf("chosen +%d is not emulated", off)
	}
}

func FuzzChoose(f *testing.F) {
	f.Add(cat(testRdiRdi, je32), byte(0))
	f.Add(reallocarray, byte(0xff))
	f.Add(cat(cmpbRip, pushR12), byte(1))
	f.Fuzz(func(t *testing.T, code []byte, mode byte) {
		// mode picks the spec and the branch targets: bit 7 = unknown targets.
		spec := Spec{ArgRegs: []Reg{x86asm.RDI, x86asm.RSI, x86asm.RDX}[:mode%4]}
		var targets map[uint64]bool
		if mode&0x80 == 0 {
			targets = map[uint64]bool{uint64(mode>>2) & 31: true}
		}
		p := Choose(code, spec, targets)
		checkInvariants(t, code, spec, targets, p)
	})
}

func TestScanTargets(t *testing.T) {
	const base = 0x1000
	// f at 0x1000: test; je32; a second function at 0x1010 jumps back to 0x1003 (rel8)
	// and calls 0x1001 (rel32), both inside f's window.
	data := cat(testRdiRdi, je32, pushRbp, []byte{0xc3}, nopw6[:5])
	data = data[:16]
	back := int8(0x1003 - 0x1012)
	data = append(data, 0xeb, byte(back))
	rel := int32(0x1001 - (0x1012 + 5))
	data = append(data, 0xe8, byte(rel), byte(rel>>8), byte(rel>>16), byte(rel>>24))
	watched := map[uint64]bool{}
	for o := uint64(1); o <= Window; o++ {
		watched[base+o] = true
	}
	got := map[uint64]bool{}
	sweep(data, base, []uint64{base, 0x1010}, watched, got)
	if !got[0x1003] || !got[0x1001] {
		t.Errorf("sweep found %v, want 0x1001 and 0x1003", got)
	}
	got = map[uint64]bool{}
	rel32Patterns(data, base, watched, got)
	if !got[0x1001] || got[0x1003] {
		t.Errorf("rel32Patterns found %v, want only 0x1001", got)
	}
}
