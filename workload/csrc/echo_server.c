// SPDX-License-Identifier: MIT
// echo-server: AF_UNIX stream echo server that never allocates (no stdio,
// no malloc): only socket/bind/listen/accept/read/write/close/unlink, and
// sigaction so that SIGTERM, SIGINT or SIGHUP (udstrace makes SIGTERM its
// parent-death signal) remove the socket file before the server dies.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "rawio.h"

static char buf[64 * 1024];

/* The bound socket's path, for the signal handler; bound is set only once
 * bind() succeeded, so a handler never removes a file this server did not
 * create. */
static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static volatile sig_atomic_t bound;

/* on_fatal runs on SIGTERM/SIGINT/SIGHUP: only async-signal-safe calls. */
static void on_fatal(int sig)
{
	int saved = errno;
	struct sigaction dfl;

	if (bound) {
		bound = 0;
		unlink(sock_path);
	}
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	errno = saved;
	raise(sig); /* delivered when the handler returns: die of the signal */
}

/* remove_socket unlinks before clearing bound: a signal in between then
 * unlinks a second time (harmless) rather than not at all. */
static void remove_socket(void)
{
	if (bound) {
		unlink(sock_path);
		bound = 0;
	}
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
	memcpy(sock_path, argv[1], plen + 1);

	{
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_fatal;
		sigemptyset(&sa.sa_mask);
		sigaddset(&sa.sa_mask, SIGTERM);
		sigaddset(&sa.sa_mask, SIGINT);
		sigaddset(&sa.sa_mask, SIGHUP);
		if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0 ||
		    sigaction(SIGHUP, &sa, NULL) != 0)
			die("sigaction failed");
	}

	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket failed");
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		die("bind failed");
	bound = 1;
	if (listen(lfd, 16) != 0) {
		remove_socket();
		die("listen failed");
	}
	if (write_all(1, "ready\n", 6) != 0) {
		remove_socket();
		die("cannot write ready line");
	}

	for (unsigned long i = 0; i < nclients; i++) {
		int cfd = accept(lfd, NULL, NULL);
		if (cfd < 0) {
			if (errno == EINTR) {
				i--;
				continue;
			}
			remove_socket();
			die("accept failed");
		}
		for (;;) {
			ssize_t r = read(cfd, buf, sizeof(buf));
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0) {
				remove_socket();
				die("read failed");
			}
			if (r == 0)
				break;
			if (write_all(cfd, buf, (size_t)r) != 0) {
				remove_socket();
				die("write failed");
			}
		}
		close(cfd);
	}
	close(lfd);
	if (unlink(sock_path) != 0)
		die("unlink failed");
	bound = 0;
	return 0;
}
