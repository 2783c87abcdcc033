// SPDX-License-Identifier: MIT
//go:build ignore

// (The build constraint above keeps the go command from rejecting a C file
// in a non-cgo package; bench embeds this file and compiles it with cc.)
// timeit: runs a command and records when it started and ended, for the
// bench's compile rows. Usage: timeit STAMPFILE COMMAND [ARG...].
// Writes "start=<s> end=<s>" (CLOCK_REALTIME, seconds since the epoch) to
// STAMPFILE once COMMAND has exited, and exits with COMMAND's status. It makes
// no allocator calls of its own on this path (no stdio, no environment
// copies), so a tracer's counts are the command's.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void stamp(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		static const char usage[] = "usage: timeit STAMPFILE COMMAND [ARG...]\n";
		write(2, usage, sizeof usage - 1);
		return 2;
	}
	struct timespec t0, t1;
	stamp(&t0);
	pid_t pid = fork();
	if (pid < 0)
		return 126;
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		static const char msg[] = "timeit: cannot run the command\n";
		write(2, msg, sizeof msg - 1);
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return 126;
	stamp(&t1);
	char line[96];
	int n = snprintf(line, sizeof line, "start=%ld.%09ld end=%ld.%09ld\n", (long)t0.tv_sec, t0.tv_nsec,
			 (long)t1.tv_sec, t1.tv_nsec);
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, line, n) != n)
		return 126;
	close(fd);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
