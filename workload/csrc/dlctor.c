// SPDX-License-Identifier: MIT
// dlctor LIBRARY: dlopen()s LIBRARY (libdlctor.so: its constructor allocates) and exits at once.
// Nothing but the dlopen: the library is mapped, runs its constructor, and the process is gone.
#include <dlfcn.h>
#include <stddef.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	return dlopen(argv[1], RTLD_NOW) == NULL;
}
