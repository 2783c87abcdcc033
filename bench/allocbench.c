// SPDX-License-Identifier: MIT
//go:build ignore

// (The build constraint above keeps the go command from rejecting a C file
// in a non-cgo package; bench embeds this file and compiles it with cc.)
// allocbench: times a tight malloc(64)/free loop for the udstrace benchmark.
// Usage: allocbench PAIRS [THREADS]. PAIRS is the total over all threads.
// Prints: ns_per_pair=<float> pairs=<n> threads=<n> cpu_s=<float> maxrss_kib=<n>
// ns_per_pair is wall-clock time around the loop only (start-up excluded);
// cpu_s and maxrss_kib are this process's own getrusage(RUSAGE_SELF).
// Then: done_realtime=<seconds since the epoch>, CLOCK_REALTIME when the
// program is done (just before it returns from main), so the bench can time
// how long a tracer takes to exit after the traced program.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static void *volatile sink;

static void *loop(void *arg)
{
	long n = (long)arg;
	for (long i = 0; i < n; i++) {
		void *p = malloc(64);
		sink = p;
		free(p);
	}
	return NULL;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: allocbench PAIRS [THREADS]\n");
		return 2;
	}
	long pairs = strtol(argv[1], NULL, 10);
	long threads = argc == 3 ? strtol(argv[2], NULL, 10) : 1;
	if (pairs < 1 || threads < 1 || threads > 1024) {
		fprintf(stderr, "allocbench: bad PAIRS or THREADS\n");
		return 2;
	}
	pthread_t tid[1024];
	double t0 = now();
	if (threads == 1) {
		loop((void *)pairs);
	} else {
		for (long t = 0; t < threads; t++) {
			long n = pairs / threads + (t < pairs % threads ? 1 : 0);
			if (pthread_create(&tid[t], NULL, loop, (void *)n) != 0) {
				fprintf(stderr, "allocbench: pthread_create failed\n");
				return 1;
			}
		}
		for (long t = 0; t < threads; t++)
			pthread_join(tid[t], NULL);
	}
	double t1 = now();

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
		     (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	printf("ns_per_pair=%.2f pairs=%ld threads=%ld cpu_s=%.3f maxrss_kib=%ld\n",
	       (t1 - t0) / (double)pairs, pairs, threads, cpu, ru.ru_maxrss);
	struct timespec done;
	clock_gettime(CLOCK_REALTIME, &done);
	printf("done_realtime=%ld.%09ld\n", (long)done.tv_sec, done.tv_nsec);
	return 0;
}
