// SPDX-License-Identifier: MIT
// echo-client: talks to echo-server over AF_UNIX, either with raw syscalls
// only (no allocation at all) or through stdio (fdopen/fgetc/fgets/fputs).
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "rawio.h"

#define MAX_SIZE (1024UL * 1024UL)
/* Send at most CHUNK bytes before reading their echo back, so that large
 * messages cannot deadlock with both sides blocked in write(2). */
#define CHUNK (32UL * 1024UL)

static const char *const classic[3] = {
	"This is the first string from the client.\n",
	"This is the second string from the client.\n",
	"This is the third string from the client.\n",
};

static char msg[MAX_SIZE + 1];
static char echo[MAX_SIZE + 1];

static int streq(const char *a, const char *b)
{
	while (*a != '\0' && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

static void die(const char *what)
{
	/* write(2) only: this must also be safe in raw mode. */
	(void)write_all(2, "echo-client: ", 13);
	(void)write_all(2, what, slen(what));
	(void)write_all(2, "\n", 1);
	_exit(1);
}

/* make_message fills msg with message i and returns its length. */
static size_t make_message(unsigned long i, unsigned long size)
{
	if (size == 0) {
		const char *s = classic[i % 3];
		size_t n = slen(s);
		memcpy(msg, s, n + 1);
		return n;
	}
	for (unsigned long j = 0; j + 1 < size; j++)
		msg[j] = (char)('a' + (i + j) % 26);
	msg[size - 1] = '\n';
	msg[size] = '\0';
	return size;
}

static int connect_to(const char *path)
{
	struct sockaddr_un addr;
	size_t plen = slen(path);
	int fd;

	if (plen == 0 || plen >= sizeof(addr.sun_path))
		die("socket path empty or too long");
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, path, plen + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket failed");
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		die("connect failed");
	return fd;
}

/* read_exact reads exactly n bytes with read(2). */
static int read_exact(int fd, char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int run_raw(int sock, unsigned long messages, unsigned long size)
{
	for (unsigned long i = 0; i < messages; i++) {
		size_t len = make_message(i, size);
		for (size_t off = 0; off < len; off += CHUNK) {
			size_t n = len - off < CHUNK ? len - off : CHUNK;
			if (write_all(sock, msg + off, n) != 0)
				die("write to server failed");
			if (read_exact(sock, echo + off, n) != 0)
				die("read from server failed");
		}
		if (write_all(1, echo, len) != 0)
			die("write to stdout failed");
	}
	if (close(sock) != 0)
		die("close failed");
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long messages, size;
	int sock;

	if (argc != 5)
		die("usage: echo-client raw|stdio SOCKET_PATH MESSAGES SIZE");
	if (parse_uint(argv[3], 1000000000UL, &messages) != 0)
		die("bad MESSAGES");
	if (parse_uint(argv[4], MAX_SIZE, &size) != 0)
		die("bad SIZE (0..1048576)");
	if (streq(argv[1], "raw"))
		return run_raw(connect_to(argv[2]), messages, size);
	if (!streq(argv[1], "stdio"))
		die("mode must be raw or stdio");

	/* stdio mode: the original experiment. */
	sock = connect_to(argv[2]);
	FILE *fp = fdopen(sock, "r");
	if (fp == NULL)
		die("fdopen failed");
	for (unsigned long i = 0; i < messages; i++) {
		size_t len = make_message(i, size);
		for (size_t off = 0; off < len; off += CHUNK) {
			size_t n = len - off < CHUNK ? len - off : CHUNK;
			if (write_all(sock, msg + off, n) != 0)
				die("write to server failed");
			if (i == 0) {
				for (size_t k = 0; k < n; k++) {
					int c = fgetc(fp);
					if (c == EOF)
						die("fgetc: unexpected end of echo");
					echo[off + k] = (char)c;
				}
			} else {
				size_t got = 0;
				while (got < n) {
					/* The only '\n' is the message's last byte,
					 * so fgets stops exactly at the chunk end. */
					if (fgets(echo + off + got, (int)(n - got + 1), fp) == NULL)
						die("fgets: unexpected end of echo");
					got += slen(echo + off + got);
				}
			}
		}
		echo[len] = '\0';
		if (fputs(echo, stdout) == EOF)
			die("fputs failed");
	}
	if (fclose(fp) != 0)
		die("fclose failed");
	if (fflush(stdout) != 0)
		die("flush stdout failed");
	return 0;
}
