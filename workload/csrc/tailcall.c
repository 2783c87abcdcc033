// SPDX-License-Identifier: MIT
// tailcall: stacks with frames that left by a tail call, built -O2 -g so that GCC turns each
// `f() { g(); }` into a jump and writes DW_TAG_call_site entries for gdb (and udstrace) to put
// the frames back:
//   main -> first (a call) -> second (jmp) -> third (jmp) -> leaf (jmp) -> malloc (a call):
//     one path, gdb shows second and third;
//   main -> fork2 -> left|right (jmp) -> both (jmp) -> zeta (jmp) -> leaf: two paths that
//     agree at their end, gdb shows both and zeta only;
//   main -> fork1 -> lone_left|lone_right (jmp) -> leaf: two paths with nothing in common,
//     gdb shows nothing between leaf and main;
//   main -> outer (jmp, from the body of inner, inlined into it) -> leaf: gdb shows one frame,
//     named inner;
//   main -> qsort in libc (jmp) -> qsort_r -> malloc: across modules, with libc's DWARF
//     (libc6-dbg) gdb shows qsort.
// Each leaf call mallocs a distinct size: 208, 214, 312 and 418 bytes.
#include <stdlib.h>
#include <string.h>

#define NOINL __attribute__((noinline))

void *volatile sink[4];
static volatile unsigned long work;

NOINL void leaf(unsigned long n, int slot)
{
	sink[slot] = malloc(n); // not a tail call: leaf keeps its frame
	work += n;
}

NOINL void third(unsigned long n, int slot) { leaf(n * 2, slot); }
NOINL void second(unsigned long n, int slot) { third(n + 1, slot); }
NOINL void first(unsigned long n, int slot)
{
	second(n + 3, slot);
	work++;
}

NOINL void zeta(unsigned long n, int slot) { leaf(n + 5, slot); }
NOINL void both(unsigned long n, int slot) { zeta(n + 1, slot); }
NOINL void left(unsigned long n, int slot) { both(n + 7, slot); }
NOINL void right(unsigned long n, int slot) { both(n + 9, slot); }
NOINL void fork2(unsigned long n, int slot)
{
	if (n & 1)
		left(n, slot);
	else
		right(n, slot);
}

NOINL void lone_left(unsigned long n, int slot) { leaf(n + 11, slot); }
NOINL void lone_right(unsigned long n, int slot) { leaf(n + 13, slot); }
NOINL void fork1(unsigned long n, int slot)
{
	if (n & 1)
		lone_left(n, slot);
	else
		lone_right(n, slot);
}

static inline __attribute__((always_inline)) void inner(unsigned long n, int slot)
{
	if (n > 1)
		leaf(n + 17, slot);
}
NOINL void outer(unsigned long n, int slot) { inner(n, slot); }

// qsort's merge sort takes its buffer from malloc when the array is over 1 KiB.
static char records[64][40];
static int by_key(const void *a, const void *b) { return memcmp(a, b, sizeof records[0]); }

int main(void)
{
	first(100, 0);
	fork2(201, 1);
	fork1(301, 2);
	outer(401, 3);
	for (int i = 0; i < 64; i++)
		records[i][0] = (char)(i * 37);
	qsort(records, 64, sizeof records[0], by_key);
	for (int i = 0; i < 4; i++)
		free(sink[i]);
	return 0;
}
