// SPDX-License-Identifier: MIT
// chain: main -> level1 -> ... -> level5, each level mallocs once; built
// WITHOUT frame pointers (-O2 -fomit-frame-pointer) for unwinder tests.
#include <stdio.h>
#include <stdlib.h>

#define LEVELS 5

static void *volatile blocks[LEVELS];
static volatile unsigned long work;

#define NOINL __attribute__((noinline, noipa))

NOINL static void level5(void)
{
	blocks[4] = malloc(55);
	work += 5;
}

NOINL static void level4(void)
{
	blocks[3] = malloc(44);
	level5();
	work += 4;
}

NOINL static void level3(void)
{
	blocks[2] = malloc(33);
	level4();
	work += 3;
}

NOINL static void level2(void)
{
	blocks[1] = malloc(22);
	level3();
	work += 2;
}

NOINL static void level1(void)
{
	blocks[0] = malloc(11);
	level2();
	work += 1;
}

int main(int argc, char **argv)
{
	long rounds = 1;

	if (argc > 2) {
		fprintf(stderr, "usage: chain [ROUNDS]\n");
		return 1;
	}
	if (argc == 2) {
		char *end;
		rounds = strtol(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0' || rounds < 0) {
			fprintf(stderr, "chain: bad ROUNDS\n");
			return 1;
		}
	}
	for (long r = 0; r < rounds; r++) {
		level1();
		for (int i = 0; i < LEVELS; i++) {
			if (blocks[i] == NULL)
				return 1;
			free(blocks[i]);
			blocks[i] = NULL;
		}
	}
	return 0;
}
