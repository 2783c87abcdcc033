// SPDX-License-Identifier: MIT
// Helpers the raw-syscall programs share: nothing here calls into libc beyond write(2),
// so nothing here can allocate.
#ifndef UDSTRACE_RAWIO_H
#define UDSTRACE_RAWIO_H

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

static size_t slen(const char *s)
{
	size_t n = 0;
	while (s[n] != '\0')
		n++;
	return n;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* parse_uint parses a decimal number in [0, max]; returns -1 on error. */
static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;
	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		unsigned long d = (unsigned long)(*s - '0');
		if (v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

#endif
