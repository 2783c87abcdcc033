package unwind

import "encoding/binary"

// MaxFrames is the most frames Unwind returns, whatever max asks for (the
// project's stack-depth limit).
const MaxFrames = 127

// Regs are the registers captured with the stack copy.
//
// arm64 will need LR as well (the RA of a leaf frame, whose rule is
// same-value in column 30); x86-64 keeps every RA on the stack.
type Regs struct {
	IP, SP, FP uint64
	// IPIsReturn: IP is a return address (the stack was taken where a call returns), so its
	// rule is looked up at IP-1, inside the call; else IP is where execution stopped.
	IPIsReturn bool
}

// Resolver maps a runtime PC to the Table of the file mapped there and the
// bias to subtract (vaddr = pc - bias). ok=false when the PC is in no known
// file.
type Resolver func(pc uint64) (t *Table, bias uint64, ok bool)

// Unwind returns up to max PCs, innermost first: regs.IP, then return
// addresses. stack holds the bytes copied from address regs.SP upward. max is
// capped at MaxFrames. It never panics on garbage input: any rule it cannot
// evaluate, or any read outside the copy, ends the trace.
func Unwind(regs Regs, stack []byte, resolve Resolver, max int) []uint64 {
	max = min(max, MaxFrames)
	if max <= 0 {
		return nil
	}
	return UnwindInto(make([]uint64, 0, max), regs, stack, resolve, max)
}

// UnwindInto is Unwind appending to dst, so hot paths can reuse a buffer.
func UnwindInto(dst []uint64, regs Regs, stack []byte, resolve Resolver, max int) []uint64 {
	max = min(max, MaxFrames)
	if max <= 0 || regs.IP == 0 {
		return dst
	}
	m := mem{base: regs.SP, b: stack}
	c := cursor{pc: regs.IP, sp: regs.SP, fp: regs.FP, fpOK: true, exact: !regs.IPIsReturn}
	dst = append(dst, c.pc)
	for n := 1; n < max; n++ {
		if !m.step(&c, resolve) || c.pc == 0 {
			break
		}
		dst = append(dst, c.pc)
	}
	return dst
}

// cursor is the register state of the frame being unwound.
type cursor struct {
	pc, sp, fp uint64
	fpOK       bool // fp is known (an undefined or unreadable FP rule clears it)
	exact      bool // pc is where execution stopped, not a return address (frame 0, or below a signal frame)
}

// mem is the stack copy: b[i] is the byte at address base+i.
type mem struct {
	base uint64
	b    []byte
}

func (m mem) read(a uint64) (uint64, bool) {
	if a < m.base {
		return 0, false
	}
	off := a - m.base
	if off > uint64(len(m.b)) || uint64(len(m.b))-off < 8 {
		return 0, false
	}
	return binary.LittleEndian.Uint64(m.b[off:]), true
}

// step unwinds c by one frame with CFI, or with frame pointers where no CFI
// covers the PC. false ends the trace.
func (m mem) step(c *cursor, resolve Resolver) bool {
	pc := c.pc
	if !c.exact {
		// A return address may lie past the end of the caller's function
		// (a call to a noreturn function): look up the call instruction.
		pc--
	}
	var r row
	var found bool
	arch := ArchAMD64
	if resolve != nil {
		if t, bias, ok := resolve(pc); ok && t != nil {
			r, found = t.lookup(pc - bias)
			arch = t.arch
		}
	}
	if !found {
		return m.stepFP(c)
	}
	regVal := func(n uint8) (uint64, bool) {
		switch n {
		case arch.SP:
			return c.sp, true
		case arch.FP:
			return c.fp, c.fpOK
		}
		return 0, false
	}
	var cfa uint64
	switch r.cfaKind {
	case CFARegOffset:
		base, ok := regVal(r.cfaReg)
		if !ok {
			return false
		}
		cfa = base + uint64(int64(r.cfaOff))
	case CFADeref:
		base, ok := regVal(r.cfaReg)
		if !ok {
			return false
		}
		if cfa, ok = m.read(base + uint64(int64(r.cfaOff))); !ok {
			return false
		}
	case CFAPLT:
		cfa = c.sp + uint64(int64(r.cfaOff))
		if uint8(c.pc&15) >= r.aux&15 {
			cfa += 1 << (r.aux >> 4)
		}
	default:
		return false
	}
	ra, ok := m.recover(r.raKind, r.raReg, r.raOff, cfa, regVal)
	if !ok || r.raKind == RuleSameValue {
		return false // x86-64 never keeps the RA in a register across a call
	}
	fp, fpOK := m.recover(r.fpKind, r.fpReg, r.fpOff, cfa, regVal)
	if r.fpKind == RuleSameValue {
		fp, fpOK = c.fp, c.fpOK
	}
	if cfa <= c.sp {
		return false // the stack only grows down: anything else is a loop
	}
	*c = cursor{pc: ra, sp: cfa, fp: fp, fpOK: fpOK, exact: r.flags&rowSignal != 0}
	return true
}

// recover evaluates one register rule of the caller.
func (m mem) recover(kind RegRuleKind, reg uint8, off int16, cfa uint64,
	regVal func(uint8) (uint64, bool)) (uint64, bool) {
	switch kind {
	case RuleOffset:
		return m.read(cfa + uint64(int64(off)))
	case RuleValOffset:
		return cfa + uint64(int64(off)), true
	case RuleAtReg:
		base, ok := regVal(reg)
		if !ok {
			return 0, false
		}
		return m.read(base + uint64(int64(off)))
	case RuleRegister:
		return regVal(reg)
	}
	return 0, false
}

// stepFP follows the frame-pointer chain: CFA = FP+16, RA = [FP+8], FP = [FP].
func (m mem) stepFP(c *cursor) bool {
	if !c.fpOK || c.fp < c.sp || c.fp&7 != 0 || c.fp+16 < c.fp {
		return false
	}
	next, ok1 := m.read(c.fp)
	ra, ok2 := m.read(c.fp + 8)
	if !ok1 || !ok2 {
		return false
	}
	*c = cursor{pc: ra, sp: c.fp + 16, fp: next, fpOK: true}
	return true
}
