// SPDX-License-Identifier: MIT
// libdlctor.so: a library whose constructor allocates through three levels of its own functions,
// for a program that dlopen()s it (dlctor): a file no tracer knows before the dlopen maps it.
// Per load: dlctor_init -> dlctor_middle (x3) -> dlctor_leaf (x2) -> malloc(DLCTOR_BASE + i), i = 0..5.
#include <stdlib.h>

#define NOINL __attribute__((noinline, noipa))
#define DLCTOR_BASE 1200

void *volatile dlctor_blocks[6];
static volatile int dlctor_calls; /* after the calls below: no tail call drops a level */

NOINL static void dlctor_leaf(int i)
{
	dlctor_blocks[i] = malloc(DLCTOR_BASE + (size_t)i);
}

NOINL static void dlctor_middle(int i)
{
	dlctor_leaf(2 * i);
	dlctor_leaf(2 * i + 1);
	dlctor_calls++;
}

__attribute__((constructor)) NOINL static void dlctor_init(void)
{
	for (int i = 0; i < 3; i++)
		dlctor_middle(i);
	dlctor_calls++;
}
