// SPDX-License-Identifier: MIT
//go:build ignore

/* sockloop N: N 100-byte messages written and read back over an AF_UNIX socketpair, timed alone:
 * each write makes the kernel allocate an skb head and its data, each read frees them. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
	long n = argc > 1 ? atol(argv[1]) : 100000;
	int sv[2];
	char buf[100] = {0};
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		if (write(sv[0], buf, sizeof(buf)) != sizeof(buf)) return 2;
		if (read(sv[1], buf, sizeof(buf)) != sizeof(buf)) return 3;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("ns_per_msg=%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
