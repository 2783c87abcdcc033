package probeplace

import (
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// family maps any general-purpose register (8/16/32/64-bit view) to its
// 64-bit register, or 0 for anything else: writing EDI or DIL clobbers RDI.
func family(r Reg) Reg {
	switch {
	case r >= x86asm.AL && r <= x86asm.R15B:
		i := r - x86asm.AL
		if i >= 4 {
			// AH..BH alias RAX..RBX; SPB.. follow at index 8, i.e. RSP.. after the shift.
			i -= 4
		}
		return x86asm.RAX + i
	case r >= x86asm.AX && r <= x86asm.R15W:
		return x86asm.RAX + (r - x86asm.AX)
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return x86asm.RAX + (r - x86asm.EAX)
	case r >= x86asm.RAX && r <= x86asm.R15:
		return r
	}
	return 0
}

func regName(r Reg) string { return "%" + strings.ToLower(r.String()) }

// controlOps transfer control without a Rel operand (or in addition to one).
var controlOps = map[x86asm.Op]bool{
	x86asm.CALL: true, x86asm.LCALL: true, x86asm.JMP: true, x86asm.LJMP: true,
	x86asm.RET: true, x86asm.LRET: true, x86asm.IRET: true, x86asm.IRETD: true, x86asm.IRETQ: true,
	x86asm.LOOP: true, x86asm.LOOPE: true, x86asm.LOOPNE: true,
	x86asm.SYSCALL: true, x86asm.SYSENTER: true, x86asm.SYSEXIT: true, x86asm.SYSRET: true,
	x86asm.INT: true, x86asm.INTO: true, x86asm.UD0: true, x86asm.UD1: true, x86asm.UD2: true,
	x86asm.HLT: true, x86asm.XBEGIN: true, x86asm.XABORT: true, x86asm.XEND: true,
}

// stackOps write RSP implicitly.
var stackOps = map[x86asm.Op]bool{
	x86asm.PUSH: true, x86asm.POP: true, x86asm.PUSHF: true, x86asm.PUSHFD: true, x86asm.PUSHFQ: true,
	x86asm.POPF: true, x86asm.POPFD: true, x86asm.POPFQ: true, x86asm.PUSHA: true, x86asm.POPA: true,
	x86asm.PUSHAD: true, x86asm.POPAD: true, x86asm.ENTER: true, x86asm.LEAVE: true,
}

// destOps write their first operand (a register) and the flags, nothing else.
var destOps = map[x86asm.Op]bool{
	x86asm.MOV: true, x86asm.MOVZX: true, x86asm.MOVSX: true, x86asm.MOVSXD: true, x86asm.LEA: true,
	x86asm.ADD: true, x86asm.SUB: true, x86asm.AND: true, x86asm.OR: true, x86asm.XOR: true,
	x86asm.ADC: true, x86asm.SBB: true, x86asm.INC: true, x86asm.DEC: true, x86asm.NEG: true, x86asm.NOT: true,
	x86asm.SHL: true, x86asm.SHR: true, x86asm.SAR: true, x86asm.ROL: true, x86asm.ROR: true,
}

func isControl(in x86asm.Inst) bool {
	if controlOps[in.Op] || strings.HasPrefix(in.Op.String(), "J") {
		return true
	}
	for _, a := range in.Args {
		if _, ok := a.(x86asm.Rel); ok {
			return true
		}
	}
	return false
}

// flagsOnly reports a compiler-prologue test/cmp, which writes only flags.
func flagsOnly(in x86asm.Inst) bool { return in.Op == x86asm.TEST || in.Op == x86asm.CMP }

// ripRelative reports a plain RIP-relative operand: it reads the module's own
// mapped data, so unlike a pointer dereference it cannot fault and stop a call
// short of the probe.
func ripRelative(m x86asm.Mem) bool { return m.Base == x86asm.RIP && m.Index == 0 && m.Segment == 0 }

// checkSources accepts register, immediate and RIP-relative memory operands;
// lea computes an address without accessing it, so any form is fine there.
func checkSources(in x86asm.Inst, args []x86asm.Arg) string {
	for _, a := range args {
		switch a := a.(type) {
		case nil, x86asm.Imm:
		case x86asm.Reg:
			if family(a) == 0 {
				return "uses non-general register " + regName(a)
			}
		case x86asm.Mem:
			if in.Op != x86asm.LEA && !ripRelative(a) {
				return "reads memory through a pointer, which may fault before the probe"
			}
		default:
			return fmt.Sprintf("has an unexpected %T operand", a)
		}
	}
	return ""
}

// unsafeToSkip returns why the probe may not move past in ("" if it may).
// It is a whitelist: anything not known to be harmless is refused.
func unsafeToSkip(in x86asm.Inst, raw []byte, args map[Reg]bool) string {
	for _, p := range in.Prefix {
		if p == 0 {
			break
		}
		if p&x86asm.PrefixInvalid != 0 {
			return "has an invalid prefix"
		}
	}
	if isEndbr(raw) {
		// endbr64/endbr32 only mark indirect-branch landing pads; their f3 is part of the opcode.
		return ""
	}
	// Prefixes are read from the bytes: x86asm folds some (fs:) into operands.
	for _, b := range raw {
		switch {
		case b == 0xf0:
			return "has a LOCK prefix"
		case b == 0xf2 || b == 0xf3:
			return "has a REP/REPNE prefix"
		case b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65:
			if in.Op != x86asm.NOP {
				// fs/gs point at TLS and the rest are unusual: keep it simple and refuse.
				return "has a segment-override prefix"
			}
			continue
		case b == 0x67:
			return "has an address-size prefix"
		case b == 0x66 || b >= 0x40 && b <= 0x4f:
			continue
		case b == 0xc4 || b == 0xc5 || b == 0x62:
			return "is VEX/EVEX encoded"
		}
		break
	}
	if isControl(in) {
		return "is a control transfer, so some calls might not reach the probe"
	}
	if stackOps[in.Op] {
		return "writes %rsp implicitly; the BPF program reads %rsp and the return address at (%rsp)"
	}

	var written []Reg
	switch {
	case in.Op == x86asm.NOP:
		// A NOP's memory operand is never accessed.
		return ""
	case flagsOnly(in):
		if why := checkSources(in, in.Args[:]); why != "" {
			return why
		}
	case destOps[in.Op] || in.Op == x86asm.IMUL && in.Args[1] != nil ||
		strings.HasPrefix(in.Op.String(), "SET") || strings.HasPrefix(in.Op.String(), "CMOV"):
		dst, ok := in.Args[0].(x86asm.Reg)
		if !ok {
			return "writes memory"
		}
		if family(dst) == 0 {
			return "writes non-general register " + regName(dst)
		}
		if why := checkSources(in, in.Args[1:]); why != "" {
			return why
		}
		written = append(written, family(dst))
	case in.Op == x86asm.XCHG:
		// xchg with memory is an implicitly locked store: registers only.
		a, ok1 := in.Args[0].(x86asm.Reg)
		b, ok2 := in.Args[1].(x86asm.Reg)
		if !ok1 || !ok2 || family(a) == 0 || family(b) == 0 {
			return "exchanges with memory or a non-general register"
		}
		written = append(written, family(a), family(b))
	case in.Op == x86asm.MUL || in.Op == x86asm.IMUL:
		// One-operand mul writes RAX and (except the 8-bit form) RDX implicitly.
		if why := checkSources(in, in.Args[:]); why != "" {
			return why
		}
		written = append(written, x86asm.RAX)
		if !has8BitOpcode(raw) {
			written = append(written, x86asm.RDX)
		}
	case in.Op == x86asm.CBW || in.Op == x86asm.CWDE || in.Op == x86asm.CDQE:
		written = append(written, x86asm.RAX)
	case in.Op == x86asm.CWD || in.Op == x86asm.CDQ || in.Op == x86asm.CQO:
		written = append(written, x86asm.RDX)
	default:
		// Rule 2 "when unsure, unsafe": cpuid, rdtsc, string ops, SIMD, div (#DE) …
		return "is not on the list of instructions known to be harmless"
	}
	for _, w := range written {
		if w == x86asm.RSP {
			return "writes %rsp; the BPF program reads %rsp and the return address at (%rsp)"
		}
		if args[w] {
			return "writes " + regName(w) + ", an argument register the BPF program reads"
		}
	}
	return ""
}

// has8BitOpcode reports the F6 /4../7 (byte-sized mul/imul/div) opcode after any prefixes.
func has8BitOpcode(raw []byte) bool {
	for _, b := range raw {
		switch {
		case b == 0x66 || b == 0x67 || b == 0xf0 || b == 0xf2 || b == 0xf3 ||
			b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65 ||
			b >= 0x40 && b <= 0x4f:
			continue
		case b == 0xf6:
			return true
		}
		return false
	}
	return false
}
