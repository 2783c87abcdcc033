// Package floor holds the bench's own minimal BPF programs: empty uprobes at
// udstrace's probe offsets, which measure what the traps alone cost.
package floor

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target amd64 floor floor.c -- -mcpu=v3 -I/usr/include/x86_64-linux-gnu -Wall -Werror
