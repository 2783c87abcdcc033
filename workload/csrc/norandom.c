// SPDX-License-Identifier: MIT
// norandom PROGRAM [ARG...]: runs PROGRAM (searched in PATH when it has no slash) with
// address-space randomization off, so a program whose allocations depend on where mmap places its
// memory (gcc's cc1 callocs a page-table block whenever its GC pages reach a new 16 MiB region)
// allocates the same way on every run; `gcc -wrapper norandom` runs cc1 and as this way.
// Allocates nothing itself, and execs through execve, which an LD_PRELOAD interposer sees.
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <unistd.h>

extern char **environ;

static char path[4096];

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int cur = personality(0xffffffff);
	if (cur == -1 || personality((unsigned long)cur | ADDR_NO_RANDOMIZE) == -1)
		return 126;
	if (strchr(argv[1], '/') != NULL) {
		execve(argv[1], argv + 1, environ);
		return 127;
	}
	const char *dirs = getenv("PATH");
	size_t name = strlen(argv[1]);
	while (dirs != NULL && *dirs != '\0') {
		const char *end = strchr(dirs, ':');
		size_t n = end != NULL ? (size_t)(end - dirs) : strlen(dirs);
		if (n > 0 && n + 1 + name < sizeof(path)) {
			memcpy(path, dirs, n);
			path[n] = '/';
			memcpy(path + n + 1, argv[1], name + 1);
			execve(path, argv + 1, environ);
		}
		dirs = end != NULL ? end + 1 : NULL;
	}
	return 127;
}
