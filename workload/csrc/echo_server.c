// SPDX-License-Identifier: MIT
// echo-server: AF_UNIX stream echo server that never allocates (no stdio,
// no malloc): only socket/bind/listen/accept/read/write/close/unlink.
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static char buf[64 * 1024];

static size_t slen(const char *s)
{
	size_t n = 0;
	while (s[n] != '\0')
		n++;
	return n;
}

static void put(int fd, const char *s)
{
	size_t n = slen(s);
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void die(const char *msg)
{
	put(2, "echo-server: ");
	put(2, msg);
	put(2, "\n");
	_exit(1);
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

int main(int argc, char **argv)
{
	unsigned long nclients;
	struct sockaddr_un addr;
	size_t plen;
	int lfd;

	if (argc != 3)
		die("usage: echo-server SOCKET_PATH NCLIENTS");
	if (parse_uint(argv[2], 1000000, &nclients) != 0)
		die("bad NCLIENTS");
	plen = slen(argv[1]);
	if (plen == 0 || plen >= sizeof(addr.sun_path))
		die("socket path empty or too long");

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, argv[1], plen + 1);

	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket failed");
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		die("bind failed");
	if (listen(lfd, 16) != 0) {
		unlink(argv[1]);
		die("listen failed");
	}
	if (write_all(1, "ready\n", 6) != 0) {
		unlink(argv[1]);
		die("cannot write ready line");
	}

	for (unsigned long i = 0; i < nclients; i++) {
		int cfd = accept(lfd, NULL, NULL);
		if (cfd < 0) {
			if (errno == EINTR) {
				i--;
				continue;
			}
			unlink(argv[1]);
			die("accept failed");
		}
		for (;;) {
			ssize_t r = read(cfd, buf, sizeof(buf));
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0) {
				unlink(argv[1]);
				die("read failed");
			}
			if (r == 0)
				break;
			if (write_all(cfd, buf, (size_t)r) != 0) {
				unlink(argv[1]);
				die("write failed");
			}
		}
		close(cfd);
	}
	close(lfd);
	if (unlink(argv[1]) != 0)
		die("unlink failed");
	return 0;
}
