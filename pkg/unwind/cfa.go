package unwind

import (
	"errors"
	"fmt"
	"math"
)

// DW_CFA_* opcodes. The high two bits hold the three compact forms.
const (
	cfaAdvanceLoc = 0x40
	cfaOffset     = 0x80
	cfaRestore    = 0xc0

	cfaNop                     = 0x00
	cfaSetLoc                  = 0x01
	cfaAdvanceLoc1             = 0x02
	cfaAdvanceLoc2             = 0x03
	cfaAdvanceLoc4             = 0x04
	cfaOffsetExtended          = 0x05
	cfaRestoreExtended         = 0x06
	cfaUndefined               = 0x07
	cfaSameValue               = 0x08
	cfaRegister                = 0x09
	cfaRememberState           = 0x0a
	cfaRestoreState            = 0x0b
	cfaDefCFA                  = 0x0c
	cfaDefCFARegister          = 0x0d
	cfaDefCFAOffset            = 0x0e
	cfaDefCFAExpression        = 0x0f
	cfaExpression              = 0x10
	cfaOffsetExtendedSf        = 0x11
	cfaDefCFASf                = 0x12
	cfaDefCFAOffsetSf          = 0x13
	cfaValOffset               = 0x14
	cfaValOffsetSf             = 0x15
	cfaValExpression           = 0x16
	cfaMIPSAdvanceLoc8         = 0x1d
	cfaGNUWindowSave           = 0x2d // arm64: DW_CFA_AARCH64_negate_ra_state
	cfaGNUArgsSize             = 0x2e
	cfaGNUNegativeOffsetExtend = 0x2f
)

// maxRememberDepth bounds DW_CFA_remember_state nesting; compilers nest 1-2 deep.
const maxRememberDepth = 64

// cfaState is the CFA rule while interpreting. Like libgcc, the reg+offset
// pair survives an expression rule so a later def_cfa_register can reuse it.
type cfaState struct {
	kind CFAKind
	reg  uint64
	off  int64
	expr CFARule // CFADeref / CFAPLT parameters
}

type regState struct {
	kind RegRuleKind
	reg  uint64
	off  int64
}

// state holds the rules for the only columns an unwinder needs: CFA, return
// address and frame pointer. Other registers' rules are decoded and dropped.
type state struct {
	cfa    cfaState
	ra, fp regState
}

func defaultState() state {
	return state{cfa: cfaState{kind: CFAUnsupported}} // RA, FP: same value
}

// interp runs CFA programs; its remember stack is reused across FDEs.
type interp struct {
	stack []state
	base  bases // sectionVAddr = vaddr of the program's first byte, for pcrel set_loc
}

var errBadOpcode = errors.New("unknown cfa opcode")

// run interprets instrs on st. With bld != nil it emits a row each time the
// location advances within [start, end); with bld == nil it runs a CIE's
// initial instructions, where location changes are invalid.
func (in *interp) run(c *cie, instrs []byte, st *state, bld *builder, start, end uint64) error {
	arch := c.arch
	r := reader{b: instrs}
	loc := start
	in.stack = in.stack[:0]
	emit := func() {
		if bld != nil && loc < end {
			bld.add(loc, st.row(c, arch))
		}
	}
	// advance moves loc by delta code units; false when past the FDE's end.
	advance := func(delta uint64) (bool, error) {
		if bld == nil {
			return false, errors.New("advancing location in cie")
		}
		emit()
		if delta > (end-loc)/c.codeAlign {
			return false, nil
		}
		loc += delta * c.codeAlign
		return loc < end, nil
	}
	for r.left() > 0 {
		op := r.u8()
		var more = true
		var err error
		switch op & 0xc0 {
		case cfaAdvanceLoc:
			more, err = advance(uint64(op & 0x3f))
		case cfaOffset:
			st.set(c, arch, uint64(op&0x3f), regState{kind: RuleOffset, off: int64(r.uleb()) * c.dataAlign})
		case cfaRestore:
			st.restore(c, arch, uint64(op&0x3f))
		default:
			more, err = in.extended(c, arch, op, &r, st, advance, &loc)
		}
		if r.err != nil {
			return fmt.Errorf("decoding cfa op %#x: %w", op, r.err)
		}
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	emit()
	return nil
}

// extended handles the opcodes with a zero high-bit pair.
func (in *interp) extended(c *cie, arch Arch, op byte, r *reader, st *state,
	advance func(uint64) (bool, error), loc *uint64) (bool, error) {
	switch op {
	case cfaNop, cfaGNUWindowSave:
		// window_save is arm64 return-address signing: PAC is not stripped here.
	case cfaSetLoc:
		b := in.base
		b.ptrSize = c.ptrSize
		v, ind, err := r.encoded(c.fdeEnc, &b, true)
		if err != nil {
			return false, err
		}
		if ind {
			return false, errIndirect
		}
		if v < *loc {
			return false, errors.New("moving location backwards")
		}
		return advance((v - *loc) / c.codeAlign)
	case cfaAdvanceLoc1:
		return advance(uint64(r.u8()))
	case cfaAdvanceLoc2:
		return advance(uint64(r.u16()))
	case cfaAdvanceLoc4:
		return advance(uint64(r.u32()))
	case cfaMIPSAdvanceLoc8:
		return advance(r.u64())
	case cfaOffsetExtended:
		reg := r.uleb()
		st.set(c, arch, reg, regState{kind: RuleOffset, off: int64(r.uleb()) * c.dataAlign})
	case cfaOffsetExtendedSf:
		reg := r.uleb()
		st.set(c, arch, reg, regState{kind: RuleOffset, off: r.sleb() * c.dataAlign})
	case cfaGNUNegativeOffsetExtend:
		reg := r.uleb()
		st.set(c, arch, reg, regState{kind: RuleOffset, off: -int64(r.uleb()) * c.dataAlign})
	case cfaValOffset:
		reg := r.uleb()
		st.set(c, arch, reg, regState{kind: RuleValOffset, off: int64(r.uleb()) * c.dataAlign})
	case cfaValOffsetSf:
		reg := r.uleb()
		st.set(c, arch, reg, regState{kind: RuleValOffset, off: r.sleb() * c.dataAlign})
	case cfaRestoreExtended:
		st.restore(c, arch, r.uleb())
	case cfaUndefined:
		st.set(c, arch, r.uleb(), regState{kind: RuleUndefined})
	case cfaSameValue:
		st.set(c, arch, r.uleb(), regState{kind: RuleSameValue})
	case cfaRegister:
		reg := r.uleb()
		st.set(c, arch, reg, regState{kind: RuleRegister, reg: r.uleb()})
	case cfaRememberState:
		if len(in.stack) >= maxRememberDepth {
			return false, errors.New("remembering state: too deep")
		}
		in.stack = append(in.stack, *st)
	case cfaRestoreState:
		if len(in.stack) == 0 {
			return false, errors.New("restoring state: stack empty")
		}
		// The CFA is part of the remembered state (DWARF 5 clarified this;
		// gcc relies on it after epilogues in the middle of a function).
		*st = in.stack[len(in.stack)-1]
		in.stack = in.stack[:len(in.stack)-1]
	case cfaDefCFA:
		reg := r.uleb()
		st.cfa = cfaState{kind: CFARegOffset, reg: reg, off: int64(r.uleb())}
	case cfaDefCFASf:
		reg := r.uleb()
		st.cfa = cfaState{kind: CFARegOffset, reg: reg, off: r.sleb() * c.dataAlign}
	case cfaDefCFARegister:
		st.cfa.reg = r.uleb()
		st.cfa.kind = CFARegOffset
	case cfaDefCFAOffset:
		st.cfa.off = int64(r.uleb())
	case cfaDefCFAOffsetSf:
		st.cfa.off = r.sleb() * c.dataAlign
	case cfaDefCFAExpression:
		block := r.take(int(min(r.uleb(), uint64(r.left())+1)))
		st.cfa.kind, st.cfa.expr = cfaExpr(block, arch)
	case cfaExpression:
		reg := r.uleb()
		block := r.take(int(min(r.uleb(), uint64(r.left())+1)))
		st.set(c, arch, reg, regExpr(block))
	case cfaValExpression:
		reg := r.uleb()
		r.take(int(min(r.uleb(), uint64(r.left())+1)))
		st.set(c, arch, reg, regState{kind: RuleUnsupported})
	case cfaGNUArgsSize:
		r.uleb()
	default:
		return false, fmt.Errorf("decoding cfa op %#x: %w", op, errBadOpcode)
	}
	return true, nil
}

// set records reg's rule when reg is a column we track.
func (st *state) set(c *cie, arch Arch, reg uint64, rs regState) {
	switch reg {
	case c.raReg:
		st.ra = rs
	case uint64(arch.FP):
		st.fp = rs
	}
}

func (st *state) restore(c *cie, arch Arch, reg uint64) {
	switch reg {
	case c.raReg:
		st.ra = c.initial.ra
	case uint64(arch.FP):
		st.fp = c.initial.fp
	}
}

// row packs st; rules whose numbers do not fit the packed row become
// unsupported rather than silently wrong.
func (st *state) row(c *cie, arch Arch) row {
	var r row
	cf := st.cfa
	switch cf.kind {
	case CFARegOffset:
		r.cfaKind, r.cfaReg, r.cfaOff = CFARegOffset, uint8(cf.reg), int32(cf.off)
		if cf.reg > math.MaxUint8 || cf.off != int64(int32(cf.off)) {
			r = row{cfaKind: CFAUnsupported}
		}
	case CFADeref, CFAPLT:
		r.cfaKind, r.cfaReg, r.cfaOff = cf.kind, cf.expr.Reg, cf.expr.Offset
		r.aux = cf.expr.Threshold | cf.expr.Shift<<4
	default:
		r.cfaKind = CFAUnsupported
	}
	r.raKind, r.raReg, r.raOff = packReg(st.ra)
	r.fpKind, r.fpReg, r.fpOff = packReg(st.fp)
	if c.signal {
		r.flags |= rowSignal
	}
	return r
}

func packReg(rs regState) (RegRuleKind, uint8, int16) {
	if rs.reg > math.MaxUint8 || rs.off != int64(int16(rs.off)) {
		return RuleUnsupported, 0, 0
	}
	return rs.kind, uint8(rs.reg), int16(rs.off)
}
