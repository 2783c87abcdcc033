// SPDX-License-Identifier: MIT
// allocpattern: performs a fixed, known sequence of malloc-family calls per
// round so that tracer counts can be checked exactly (see ../workload_test.go).
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

/* Per round (keep in sync with allocPattern in workload_test.go):
 *   malloc(24) malloc(1000) calloc(10,100) realloc(NULL,64)
 *   realloc(p,100000) realloc(p,0) reallocarray(NULL,8,16)
 *   posix_memalign(&p,64,256) aligned_alloc(64,512) memalign(128,300)
 *   valloc(5000) pvalloc(100) malloc(200000) free(NULL)
 *   free() x10 (every live block once)
 */

static void *volatile sinkv;

__attribute__((noinline)) static void sink(void *p)
{
	sinkv = p;
}

static char outbuf[BUFSIZ];

int main(int argc, char **argv)
{
	long rounds = 1;
	unsigned long moved = 0, failed = 0;

	/* Give stdout a static buffer so printf does not malloc one: the
	 * allocation pattern must be exactly the documented list. */
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));

	if (argc > 2) {
		fprintf(stderr, "usage: allocpattern [ROUNDS]\n");
		return 1;
	}
	if (argc == 2) {
		char *end;
		rounds = strtol(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0' || rounds < 0) {
			fprintf(stderr, "allocpattern: bad ROUNDS\n");
			return 1;
		}
	}

	for (long r = 0; r < rounds; r++) {
		void *volatile null = NULL;
		void *live[10];
		int n = 0;

		live[n++] = malloc(24);
		live[n++] = malloc(1000);
		live[n++] = calloc(10, 100);

		void *q = realloc(null, 64);
		sink(q);
		void *q2 = realloc(q, 100000);
		if (q2 == NULL) {
			failed++;
			q2 = q;
		} else if (q2 != q) {
			moved++;
		}
		sink(q2);
		void *z = realloc(q2, 0); /* frees q2; glibc returns NULL */
		sink(z);
		if (z != NULL)
			failed++; /* leaked on purpose: never happens with glibc */

		live[n++] = reallocarray(null, 8, 16);
		void *pm = NULL;
		if (posix_memalign(&pm, 64, 256) != 0)
			failed++;
		live[n++] = pm;
		live[n++] = aligned_alloc(64, 512);
		live[n++] = memalign(128, 300);
		live[n++] = valloc(5000);
		live[n++] = pvalloc(100);
		live[n++] = malloc(200000);

		for (int i = 0; i < n; i++) {
			sink(live[i]);
			if (live[i] == NULL)
				failed++;
		}
		free(null);
		for (int i = 0; i < n; i++)
			free(live[i]);
	}

	printf("allocpattern rounds=%ld realloc_moved=%lu failed=%lu\n", rounds, moved, failed);
	fflush(stdout);
	return failed != 0;
}
