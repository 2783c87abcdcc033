package unwind

import "math"

// DW_OP_* opcodes appearing in the expressions recognised below.
const (
	opDeref = 0x06
	opAnd   = 0x1a
	opPlus  = 0x22
	opShl   = 0x24
	opGe    = 0x2a
	opLit0  = 0x30
	opLit31 = 0x4f
	opBreg0 = 0x70
	opBreg1 = 0x8f
	opBregx = 0x92
)

// breg decodes DW_OP_bregN / DW_OP_bregx at r; ok=false if r is not at one.
func breg(r *reader) (reg uint64, off int64, ok bool) {
	op := r.u8()
	switch {
	case op >= opBreg0 && op <= opBreg1:
		reg = uint64(op - opBreg0)
	case op == opBregx:
		reg = r.uleb()
	default:
		return 0, 0, false
	}
	off = r.sleb()
	return reg, off, r.err == nil
}

// lit decodes DW_OP_litN.
func lit(r *reader) (uint8, bool) {
	op := r.u8()
	if r.err != nil || op < opLit0 || op > opLit31 {
		return 0, false
	}
	return op - opLit0, true
}

func expect(r *reader, op byte) bool { return r.u8() == op && r.err == nil }

// cfaExpr recognises the CFA expressions compilers and linkers emit that can
// be evaluated from SP, FP and IP alone:
//
//	PLT (binutils .plt / .plt.sec, lazy and IBT variants):
//	  breg(SP) A; breg(RA) 0; lit15; and; litK; ge; litS; shl; plus
//	  => CFA = SP + A + ((IP & 15) >= K ? 1<<S : 0)
//	realigned stack (gcc main with -mstackrealign, signal frames):
//	  breg(R) A; deref  => CFA = *(R + A)
//
// Anything else is CFAUnsupported.
func cfaExpr(block []byte, arch Arch) (CFAKind, CFARule) {
	r := reader{b: block}
	reg, off, ok := breg(&r)
	if !ok || reg > math.MaxUint8 || off != int64(int32(off)) {
		return CFAUnsupported, CFARule{}
	}
	if rest := r.b[r.off:]; len(rest) == 1 && rest[0] == opDeref {
		return CFADeref, CFARule{Kind: CFADeref, Reg: uint8(reg), Offset: int32(off)}
	}
	if reg != uint64(arch.SP) {
		return CFAUnsupported, CFARule{}
	}
	ipReg, ipOff, ok := breg(&r)
	if !ok || ipOff != 0 || ipReg != uint64(arch.RA) {
		return CFAUnsupported, CFARule{}
	}
	if k, ok := lit(&r); !ok || k != 15 || !expect(&r, opAnd) {
		return CFAUnsupported, CFARule{}
	}
	k, ok := lit(&r)
	if !ok || k > 15 || !expect(&r, opGe) {
		return CFAUnsupported, CFARule{}
	}
	s, ok := lit(&r)
	if !ok || s > 4 || !expect(&r, opShl) || !expect(&r, opPlus) || r.left() != 0 {
		return CFAUnsupported, CFARule{}
	}
	return CFAPLT, CFARule{Kind: CFAPLT, Reg: uint8(reg), Offset: int32(off), Threshold: k, Shift: s}
}

// regExpr recognises "saved at breg(R) A" (DW_CFA_expression with a single
// DW_OP_bregN), as in signal frames and realigned-stack prologues.
func regExpr(block []byte) regState {
	r := reader{b: block}
	reg, off, ok := breg(&r)
	if !ok || r.left() != 0 {
		return regState{kind: RuleUnsupported}
	}
	return regState{kind: RuleAtReg, reg: reg, off: off}
}
