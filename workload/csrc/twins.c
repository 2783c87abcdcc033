// SPDX-License-Identifier: MIT
// twins: main alternates via_a() and via_b(), identical functions that each
// call leaf(), which mallocs. Every malloc entry has the same pc, stack
// pointer and frame pointer; only leaf's return address (into via_a or via_b)
// tells the two stacks apart. A tracer that remembers a thread's last stack
// by its registers must still count ROUNDS calls under each twin.
#include <stdio.h>
#include <stdlib.h>

#define NOINL __attribute__((noinline, noipa))

static void *volatile sink;

NOINL static void leaf(void)
{
	sink = malloc(48);
	free(sink);
}

NOINL static void via_a(void)
{
	leaf();
	__asm__ volatile("" ::: "memory"); /* not a tail call: via_a stays on the stack */
}

NOINL static void via_b(void)
{
	leaf();
	__asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv)
{
	long rounds = 1000;

	if (argc > 2) {
		fprintf(stderr, "usage: twins [ROUNDS]\n");
		return 1;
	}
	if (argc == 2) {
		char *end;
		rounds = strtol(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0' || rounds < 0) {
			fprintf(stderr, "twins: bad ROUNDS\n");
			return 1;
		}
	}
	for (long i = 0; i < rounds; i++) {
		via_a();
		/* via_b once, or twice from the same call site: a stack repeated exactly, which a
		 * remembered stack is right to serve. */
		for (volatile int k = 0; k < 1 + (i % 3 == 0); k++)
			via_b();
	}
	return 0;
}
