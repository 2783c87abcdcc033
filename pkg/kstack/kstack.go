// Package kstack is the kernel's stack format: frames named by module id and file offset, and
// the stack id hashed from them, computed here exactly as bpf/unwind.h and bpf/stack.h do.
package kstack

// Frame is an encoded frame: module id << 48 | file offset, or a raw address (module 0) for code
// outside any file. User-space addresses fit in 47 bits, so a raw address never has module bits.
type Frame uint64

// MaxFrames is the most frames a kernel stack holds: the allocator's own frame and 127 callers.
const MaxFrames = 128

// MaxModules bounds module ids (16 bits); ids from KernelIDs on are handed out by the kernel.
const (
	MaxModules = 1 << 16
	KernelIDs  = 0x8000
)

const offsetMask = 1<<48 - 1

// Encode names a file offset in module mod (mod 0: off is a raw address).
func Encode(mod uint32, off uint64) Frame {
	if mod == 0 {
		return Frame(off)
	}
	return Frame(uint64(mod)<<48 | off&offsetMask)
}

// Module is the frame's module id; 0 for a raw address.
func (f Frame) Module() uint32 { return uint32(uint64(f) >> 48) }

// Offset is the frame's file offset in its module, or its raw address.
func (f Frame) Offset() uint64 {
	if f.Module() == 0 {
		return uint64(f)
	}
	return uint64(f) & offsetMask
}

// Flags of a stack that take part in its id.
const (
	// Truncated: the stack stops at a module whose unwind table was still loading.
	Truncated = 2
)

// Hash is a running stack hash; the zero value is not ready: use NewHash.
type Hash struct{ h1, h2 uint64 }

// NewHash starts a stack hash with the kernel's seeds.
func NewHash() Hash { return Hash{h1: 0x84222325cbf29ce4, h2: 0x27d4eb2f165667c5} }

// Add mixes in one frame.
func (h *Hash) Add(f Frame) {
	h.h1 = (h.h1 ^ uint64(f)) * 0x9e3779b97f4a7c15
	h.h1 ^= h.h1 >> 32
	h.h2 = (h.h2 ^ uint64(f)) * 0xc2b2ae3d27d4eb4f
	h.h2 ^= h.h2 >> 29
}

// Sum finishes the hash of n frames with flags: the stack id (never 0) and the second hash the
// kernel keeps to tell collisions from repeats.
func (h Hash) Sum(n int, flags uint8) (id, check uint64) {
	h.Add(Frame(uint64(n) | uint64(flags)<<16))
	id = h.h1
	if id == 0 {
		id = 1
	}
	return id, h.h2
}

// ID is the stack id of frames, as the kernel computes it.
func ID(frames []Frame, flags uint8) uint64 {
	h := NewHash()
	for _, f := range frames {
		h.Add(f)
	}
	id, _ := h.Sum(len(frames), flags)
	return id
}

// CollisionID is the id the kernel gives a stack whose id another stack already has.
func CollisionID(check uint64) uint64 { return check | 1<<63 }
