package unwind

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// errTruncated marks a read past the end of an entry; it is sticky in reader.
var errTruncated = errors.New("truncated data")

// Pointer encodings (DW_EH_PE_*) as used by .eh_frame augmentations.
const (
	peAbsptr  = 0x00
	peUleb128 = 0x01
	peUdata2  = 0x02
	peUdata4  = 0x03
	peUdata8  = 0x04
	peSleb128 = 0x09
	peSdata2  = 0x0a
	peSdata4  = 0x0b
	peSdata8  = 0x0c

	pePcrel   = 0x10
	peTextrel = 0x20
	peDatarel = 0x30
	peFuncrel = 0x40
	peAligned = 0x50

	peIndirect = 0x80
	peOmit     = 0xff
)

// reader decodes little-endian DWARF data; the first failure sticks so
// callers check err once after a run of reads.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || n > r.left() {
		r.err = errTruncated
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *reader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

// uleb reads an unsigned LEB128; bits beyond 64 are dropped rather than
// failing, as binutils does.
func (r *reader) uleb() uint64 {
	var v uint64
	var shift uint
	for {
		b := r.u8()
		if r.err != nil {
			return 0
		}
		if shift < 64 {
			v |= uint64(b&0x7f) << shift
		}
		shift += 7
		if b&0x80 == 0 {
			return v
		}
	}
}

func (r *reader) sleb() int64 {
	var v int64
	var shift uint
	var b byte
	for {
		b = r.u8()
		if r.err != nil {
			return 0
		}
		if shift < 64 {
			v |= int64(b&0x7f) << shift
		}
		shift += 7
		if b&0x80 == 0 {
			break
		}
	}
	if shift < 64 && b&0x40 != 0 {
		v |= -1 << shift
	}
	return v
}

// cstring reads a NUL-terminated string.
func (r *reader) cstring() string {
	for i := r.off; i < len(r.b); i++ {
		if r.b[i] == 0 {
			s := string(r.b[r.off:i])
			r.off = i + 1
			return s
		}
	}
	r.err = errTruncated
	return ""
}

// bases are the addresses pointer encodings may be relative to.
type bases struct {
	sectionVAddr uint64 // vaddr of r.b[0]; pcrel is relative to the field itself
	dataBase     uint64 // for datarel; 0 = unknown
	ptrSize      int
}

// encoded reads a pointer in encoding enc. applyRel=false reads just the
// value (FDE address ranges use only the format nibble). The indirect flag
// is reported so callers can skip values they cannot dereference.
func (r *reader) encoded(enc byte, b *bases, applyRel bool) (v uint64, indirect bool, err error) {
	if enc == peOmit {
		return 0, false, nil
	}
	pos := b.sectionVAddr + uint64(r.off)
	if enc&0x70 == peAligned {
		pad := (b.ptrSize - int(pos%uint64(b.ptrSize))) % b.ptrSize
		r.take(pad)
		pos += uint64(pad)
		enc = peAbsptr
	}
	switch enc & 0x0f {
	case peAbsptr:
		if b.ptrSize == 4 {
			v = uint64(r.u32())
		} else {
			v = r.u64()
		}
	case peUleb128:
		v = r.uleb()
	case peUdata2:
		v = uint64(r.u16())
	case peUdata4:
		v = uint64(r.u32())
	case peUdata8:
		v = r.u64()
	case peSleb128:
		v = uint64(r.sleb())
	case peSdata2:
		v = uint64(int64(int16(r.u16())))
	case peSdata4:
		v = uint64(int64(int32(r.u32())))
	case peSdata8:
		v = r.u64()
	default:
		return 0, false, fmt.Errorf("decoding pointer: unknown format %#x", enc)
	}
	if r.err != nil {
		return 0, false, r.err
	}
	if !applyRel {
		return v, false, nil
	}
	switch enc & 0x70 {
	case peAbsptr:
	case pePcrel:
		v += pos
	case peDatarel:
		if b.dataBase == 0 {
			return 0, false, errors.New("decoding pointer: datarel without data base")
		}
		v += b.dataBase
	default:
		return 0, false, fmt.Errorf("decoding pointer: unsupported application %#x", enc&0x70)
	}
	if b.ptrSize == 4 {
		v &= 0xffffffff
	}
	return v, enc&peIndirect != 0, nil
}
