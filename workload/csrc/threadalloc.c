// SPDX-License-Identifier: MIT
// threadalloc: THREADS threads (default 4) each make ROUNDS (default 20000) malloc/free pairs,
// sizes cycling from 16 B to 64 KiB; every 1000th block is 128 KiB or more and grows each time,
// so it stays above glibc's sliding mmap threshold and some are served by mmap. The counts are
// fixed (per thread ROUNDS mallocs, ROUNDS frees): tests compare tracers' counts with them. No stdio.
#include <pthread.h>
#include <stdlib.h>

static void *volatile sink;
static long rounds = 20000;

static const size_t sizes[] = {16, 24, 40, 64, 100, 128, 256, 500, 1024, 2000, 4096, 8192, 16384, 32768, 65536};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static void *work(void *arg)
{
	size_t id = (size_t)arg;
	for (long i = 0; i < rounds; i++) {
		size_t n = sizes[((size_t)i + id) % NSIZES];
		if (i % 1000 == 999)
			n = ((size_t)128 << 10) + (size_t)(i / 1000) * 4096;
		char *p = malloc(n);
		if (p == NULL)
			abort();
		p[0] = 1;
		sink = p;
		free(p);
	}
	return NULL;
}

static long arg(const char *s, long max)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 1 || v > max)
		exit(2);
	return v;
}

int main(int argc, char **argv)
{
	long threads = 4;
	pthread_t t[64];

	if (argc > 3)
		return 2;
	if (argc > 1)
		threads = arg(argv[1], 64);
	if (argc > 2)
		rounds = arg(argv[2], 100000000);
	for (long i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, work, (void *)(size_t)i) != 0)
			return 1;
	for (long i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	return 0;
}
