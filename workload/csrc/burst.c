// SPDX-License-Identifier: MIT
// burst: N (default 12000) malloc(64) back to back with nothing in between, then frees them
// all: the densest flood of events a tracer's ring buffer meets. No stdio, no other allocation.
#include <stdlib.h>

#define MAXN 1000000
static void *blocks[MAXN];

int main(int argc, char **argv)
{
	long n = 12000;

	if (argc > 2)
		return 2;
	if (argc == 2) {
		char *end;
		n = strtol(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0' || n < 0 || n > MAXN)
			return 2;
	}
	for (long i = 0; i < n; i++)
		blocks[i] = malloc(64);
	for (long i = 0; i < n; i++) {
		if (blocks[i] == NULL)
			return 1;
		free(blocks[i]);
	}
	return 0;
}
