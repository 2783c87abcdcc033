// Package probeplace chooses, per function, the first probe offset the kernel
// emulates instead of single-stepping, where every call still passes and the
// arguments are intact.
//
// An x86-64 uprobe costs about 1 µs when the kernel emulates the probed
// instruction and 10–13 µs when it must single-step it out of line
// (arch/x86/kernel/uprobes.c). Many libc entry points start with a test/cmp
// that is single-stepped, followed within a few bytes by an emulated jcc or
// push; probing there sees exactly the same calls, argument registers and
// stack pointer. The rules are listed in RULES.md.
package probeplace

import (
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Reg is an x86 register as decoded by x86asm.
type Reg = x86asm.Reg

// Spec says what the BPF program attached to a function reads.
type Spec struct {
	// ArgRegs are the registers the BPF program reads at the probe (e.g. RDI,
	// RSI, RDX); they must be unmodified before the chosen offset.
	ArgRegs []x86asm.Reg
}

// Placement is where to put the uprobe of one function.
type Placement struct {
	Offset   uint64 // bytes past the function start (0 = the entry itself)
	Emulated bool   // the instruction at Offset is one the kernel emulates
	Reason   string // why this offset (or why the search stopped at 0)
}

const (
	// maxInsns bounds the walk: prologues put the first push/jcc within a few instructions.
	maxInsns = 8
	// maxBytes bounds the walk: a candidate must start before this many bytes.
	maxBytes = 32
	// Window is how far past a function start branch targets matter to Choose
	// (maxBytes plus the longest x86 instruction).
	Window = maxBytes + 15
)

// Choose decides for one function given its machine code (the bytes from the
// function start; at least its first 64 bytes, ideally all of it).
// branchTargets holds every address (relative to the function start) that
// some direct branch anywhere in the file jumps to; nil means unknown.
func Choose(code []byte, spec Spec, branchTargets map[uint64]bool) Placement {
	args := make(map[Reg]bool, len(spec.ArgRegs))
	for _, r := range spec.ArgRegs {
		if f := family(r); f != 0 {
			args[f] = true
		}
	}
	entryEmulated := false
	if in, err := decode(code); err == nil {
		entryEmulated, _ = emulated(code[:in.Len])
	}
	stop := func(format string, a ...any) Placement {
		return Placement{Offset: 0, Emulated: entryEmulated, Reason: fmt.Sprintf(format, a...)}
	}
	if len(code) == 0 {
		return stop("no code")
	}

	var skipped []string // what the probe moves past, for the reason
	off := 0
	for n := 0; n < maxInsns && off < maxBytes; n++ {
		if off >= len(code) {
			return stop("reached the end of the function at +%d", off)
		}
		in, err := decode(code[off:])
		if err != nil {
			// Rule 2: an instruction we cannot decode cannot be proven harmless.
			return stop("stopped at +%d: %v", off, err)
		}
		raw := code[off : off+in.Len]
		text := syntax(in, raw)
		if ok, what := emulated(raw); ok {
			if off == 0 {
				return Placement{Offset: 0, Emulated: true, Reason: fmt.Sprintf("+0 %s is %s, emulated by the kernel", text, what)}
			}
			return Placement{Offset: uint64(off), Emulated: true, Reason: fmt.Sprintf("+%d %s is %s, emulated by the kernel; moved past %s",
				off, text, what, strings.Join(skipped, ", "))}
		}
		if why := unsafeToSkip(in, raw, args); why != "" {
			// Rule 2: the probe must see every call with unchanged RSP, [RSP] and arguments.
			return stop("+0 is single-stepped; cannot move past +%d %s: %s", off, text, why)
		}
		if branchTargets == nil && !flagsOnly(in) {
			// Rule 3 (unknown targets): only compiler-style test/cmp may be skipped blind.
			return stop("+0 is single-stepped; branch targets unknown, so only test/cmp may be skipped, not +%d %s", off, text)
		}
		next := off + in.Len
		for t := off + 1; t <= next; t++ {
			if branchTargets[uint64(t)] {
				// Rule 3: a branch landing at or before the probe would re-fire or skip it.
				return stop("+0 is single-stepped; a direct branch in the file targets +%d, inside the probe prefix", t)
			}
		}
		skipped = append(skipped, fmt.Sprintf("+%d %s", off, text))
		off = next
	}
	// Rule 4: nothing emulated close enough to the entry.
	return stop("nothing the kernel emulates within %d instructions / %d bytes that every call reaches intact", maxInsns, maxBytes)
}

// isEndbr reports endbr64/endbr32 (f3 0f 1e fa/fb), CET landing pads that
// x86asm does not know and that have no effect.
func isEndbr(code []byte) bool {
	return len(code) >= 4 && code[0] == 0xf3 && code[1] == 0x0f && code[2] == 0x1e && (code[3] == 0xfa || code[3] == 0xfb)
}

// decode decodes one 64-bit instruction, treating anything x86asm only
// half-understands as an error.
func decode(code []byte) (in x86asm.Inst, err error) {
	defer func() {
		// Rule 6: a decoder panic on garbage must not take the tracer down.
		if r := recover(); r != nil {
			in, err = x86asm.Inst{}, fmt.Errorf("decoding instruction: panic: %v", r)
		}
	}()
	if isEndbr(code) {
		return x86asm.Inst{Op: x86asm.NOP, Len: 4, Mode: 64}, nil
	}
	in, err = x86asm.Decode(code, 64)
	if err != nil {
		return x86asm.Inst{}, fmt.Errorf("decoding instruction: %w", err)
	}
	if in.Op == 0 || in.Len <= 0 || in.Len > len(code) {
		// A lone prefix (x86asm's answer for unknown opcodes) is not a clean decode.
		return x86asm.Inst{}, fmt.Errorf("decoding instruction: unknown opcode % x", code[:min(len(code), 4)])
	}
	return in, nil
}

// emulated reports whether the kernel emulates raw (one whole instruction)
// rather than single-stepping it, matching exact opcode bytes.
func emulated(raw []byte) (bool, string) {
	n := len(raw)
	if n == 0 {
		return false, ""
	}
	b0 := raw[0]
	switch {
	case n == 1 && b0 >= 0x50 && b0 <= 0x57:
		return true, "a register push"
	case n == 2 && b0 == 0x41 && raw[1] >= 0x50 && raw[1] <= 0x57:
		// Only REX 0x41 is accepted by push_setup_xol_ops (r8–r15).
		return true, "a register push"
	case n == 2 && (b0 == 0xeb || b0 >= 0x70 && b0 <= 0x7f):
		return true, "a rel8 jump"
	case n == 5 && b0 == 0xe9:
		return true, "a rel32 jump"
	case n == 5 && b0 == 0xe8:
		return true, "a rel32 call"
	case n == 6 && b0 == 0x0f && raw[1] >= 0x80 && raw[1] <= 0x8f:
		return true, "a rel32 conditional jump"
	case n == 1 && b0 == 0x90:
		return true, "a nop"
	case n >= 3 && b0 == 0x0f && raw[1] == 0x1f && raw[2]>>3&7 == 0:
		// 0f 1f /0 without prefixes is NOPL, which insn_is_nop accepts.
		return true, "a multi-byte nop"
	}
	return false, ""
}

// syntax renders an instruction in AT&T syntax (as objdump does) for reasons.
func syntax(in x86asm.Inst, raw []byte) (s string) {
	if isEndbr(raw) {
		return "endbr"
	}
	defer func() {
		// A formatting panic only loses the text, never the decision.
		if recover() != nil {
			s = fmt.Sprintf("% x", raw)
		}
	}()
	return x86asm.GNUSyntax(in, 0, nil)
}
