// Package unwind unwinds copied user stacks with .eh_frame CFI (x86-64; arm64
// designed for), falling back to frame pointers.
//
// ParseELF compiles a file's call-frame information once into a Table of
// sorted, 24-byte rows keyed by ELF virtual address, so Lookup is a binary
// search. Unwind walks a stack copy taken at a uretprobe: frame 0 is the
// exact PC, later frames are return addresses (looked up at pc-1).
//
// Register numbers are DWARF numbers throughout, so the same rows serve
// several architectures; an Arch names which numbers mean SP, FP and the
// return address:
//
//	x86-64: rsp=7, rbp=6, return address column 16 (rip)
//	arm64:  sp=31, fp=x29, lr=x30 (the return address column is 30; in leaf
//	        frames the RA rule is same-value, i.e. "still in LR")
//
// Only the CFA, the return address and the frame pointer are tracked: that
// is all an unwinder that starts from (IP, SP, FP) can use.
//
// Limits: CFAs based on registers other than SP/FP and DWARF expressions
// other than the PLT and "*(reg+off)" patterns end the trace; arm64 needs
// Regs.LR before Unwind can follow leaf frames, and PAC-signed return
// addresses are not stripped.
package unwind
