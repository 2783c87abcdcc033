// SPDX-License-Identifier: MIT
// allocount.so: LD_PRELOAD interposer that counts malloc-family calls and
// writes them to $ALLOCOUNT_DIR/allocount.<pid> at exit (ground truth for tests).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

enum {
	F_MALLOC,
	F_CALLOC,
	F_REALLOC,
	F_REALLOCARRAY,
	F_FREE,
	F_POSIX_MEMALIGN,
	F_ALIGNED_ALLOC,
	F_MEMALIGN,
	F_VALLOC,
	F_PVALLOC,
	F_COUNT
};

static const char *const names[F_COUNT] = {
	"malloc", "calloc", "realloc", "reallocarray", "free",
	"posix_memalign", "aligned_alloc", "memalign", "valloc", "pvalloc",
};

struct counter {
	atomic_ulong calls, bytes, null;
};

static struct counter counters[F_COUNT];

/* Depth of interposed calls on this thread. glibc's reallocarray calls
 * realloc through the PLT, so without this a program's reallocarray would
 * also be counted as a realloc. Only the outermost call is counted. */
static __thread int depth __attribute__((tls_model("initial-exec")));

static void count(int f, size_t bytes, int isnull)
{
	if (depth != 0)
		return;
	atomic_fetch_add_explicit(&counters[f].calls, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&counters[f].bytes, bytes, memory_order_relaxed);
	if (isnull)
		atomic_fetch_add_explicit(&counters[f].null, 1, memory_order_relaxed);
}

/* ---- real functions, resolved once ---- */

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void *(*real_reallocarray)(void *, size_t, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);
static void *(*real_pvalloc)(size_t);

enum { UNRESOLVED, RESOLVING, RESOLVED };
static atomic_int state = UNRESOLVED;
/* Set while this thread runs dlsym; initial-exec so that accessing it can
 * never make the dynamic TLS machinery allocate. */
static __thread int in_resolve __attribute__((tls_model("initial-exec")));

/* resolve returns 1 if the real functions are usable, 0 if the caller must
 * use the bootstrap buffer (recursive call from inside dlsym). */
static int resolve(void)
{
	if (atomic_load_explicit(&state, memory_order_acquire) == RESOLVED)
		return 1;
	if (in_resolve)
		return 0;
	int expected = UNRESOLVED;
	if (atomic_compare_exchange_strong(&state, &expected, RESOLVING)) {
		in_resolve = 1;
		real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
		real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
		real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
		real_reallocarray = (void *(*)(void *, size_t, size_t))dlsym(RTLD_NEXT, "reallocarray");
		real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
		real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
		real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
		real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
		real_valloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "valloc");
		real_pvalloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "pvalloc");
		in_resolve = 0;
		atomic_store_explicit(&state, RESOLVED, memory_order_release);
		return 1;
	}
	while (atomic_load_explicit(&state, memory_order_acquire) != RESOLVED)
		sched_yield();
	return 1;
}

/* ---- bootstrap bump allocator for calls made from inside dlsym ---- */

#define BOOT_SIZE (64 * 1024)
#define BOOT_HDR 16
static alignas(64) unsigned char boot[BOOT_SIZE];
static atomic_size_t boot_used;

static int in_boot(const void *p)
{
	return (const unsigned char *)p >= boot && (const unsigned char *)p < boot + BOOT_SIZE;
}

static void *boot_alloc(size_t align, size_t size)
{
	if (align < BOOT_HDR)
		align = BOOT_HDR;
	if (size > BOOT_SIZE)
		return NULL;
	size_t need = (size + BOOT_HDR + align + 15) & ~(size_t)15;
	size_t off = atomic_fetch_add(&boot_used, need);
	if (off + need > BOOT_SIZE)
		return NULL;
	uintptr_t base = (uintptr_t)(boot + off);
	uintptr_t p = (base + BOOT_HDR + align - 1) & ~(uintptr_t)(align - 1);
	memcpy((void *)(p - sizeof(size_t)), &size, sizeof(size_t));
	return (void *)p; /* boot is zero-initialised and never reused */
}

static size_t boot_size(const void *p)
{
	size_t n;
	memcpy(&n, (const unsigned char *)p - sizeof(size_t), sizeof(size_t));
	return n;
}

/* ---- interposed functions ---- */

void *malloc(size_t size)
{
	if (!resolve())
		return boot_alloc(16, size);
	depth++;
	void *p = real_malloc(size);
	depth--;
	count(F_MALLOC, size, p == NULL);
	return p;
}

void *calloc(size_t nmemb, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(nmemb, size, &total))
		total = SIZE_MAX;
	if (!resolve())
		return boot_alloc(16, total);
	depth++;
	void *p = real_calloc(nmemb, size);
	depth--;
	count(F_CALLOC, total, p == NULL);
	return p;
}

static void *boot_realloc(void *old, size_t size)
{
	void *p = resolve() ? real_malloc(size) : boot_alloc(16, size);
	if (p != NULL && old != NULL) {
		size_t n = boot_size(old);
		memcpy(p, old, n < size ? n : size);
	}
	return p;
}

void *realloc(void *ptr, size_t size)
{
	if (ptr != NULL && in_boot(ptr))
		return boot_realloc(ptr, size);
	if (!resolve())
		return boot_realloc(ptr, size);
	depth++;
	void *p = real_realloc(ptr, size);
	depth--;
	count(F_REALLOC, size, p == NULL);
	return p;
}

void *reallocarray(void *ptr, size_t nmemb, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(nmemb, size, &total))
		total = SIZE_MAX;
	if ((ptr != NULL && in_boot(ptr)) || !resolve()) {
		if (total == SIZE_MAX) {
			errno = ENOMEM;
			return NULL;
		}
		return boot_realloc(ptr, total);
	}
	depth++;
	void *p = real_reallocarray(ptr, nmemb, size);
	depth--;
	count(F_REALLOCARRAY, total, p == NULL);
	return p;
}

void free(void *ptr)
{
	if (ptr != NULL && in_boot(ptr))
		return;
	if (!resolve())
		return; /* cannot happen for non-boot pointers */
	count(F_FREE, 0, ptr == NULL);
	depth++;
	real_free(ptr);
	depth--;
}

int posix_memalign(void **memptr, size_t alignment, size_t size)
{
	if (!resolve()) {
		void *p = boot_alloc(alignment, size);
		if (p == NULL)
			return ENOMEM;
		*memptr = p;
		return 0;
	}
	depth++;
	int rc = real_posix_memalign(memptr, alignment, size);
	depth--;
	count(F_POSIX_MEMALIGN, size, rc != 0);
	return rc;
}

#define ALIGNED_WRAPPER(fn, idx)                                      \
	void *fn(size_t alignment, size_t size)                       \
	{                                                             \
		if (!resolve())                                       \
			return boot_alloc(alignment, size);           \
		depth++;                                              \
		void *p = real_##fn(alignment, size);                 \
		depth--;                                              \
		count(idx, size, p == NULL);                          \
		return p;                                             \
	}

ALIGNED_WRAPPER(aligned_alloc, F_ALIGNED_ALLOC)
ALIGNED_WRAPPER(memalign, F_MEMALIGN)

#define PAGE_WRAPPER(fn, idx)                                         \
	void *fn(size_t size)                                         \
	{                                                             \
		if (!resolve())                                       \
			return boot_alloc(4096, size);                \
		depth++;                                              \
		void *p = real_##fn(size);                            \
		depth--;                                              \
		count(idx, size, p == NULL);                          \
		return p;                                             \
	}

PAGE_WRAPPER(valloc, F_VALLOC)
PAGE_WRAPPER(pvalloc, F_PVALLOC)

/* ---- dump ---- */

static const char *env_lookup(const char *name)
{
	size_t n = strlen(name);
	if (environ == NULL)
		return NULL;
	for (char **e = environ; *e != NULL; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

struct out {
	char buf[4096];
	size_t n;
	int overflow;
};

static void out_str(struct out *o, const char *s)
{
	for (; *s != '\0'; s++) {
		if (o->n + 1 >= sizeof(o->buf)) {
			o->overflow = 1;
			return;
		}
		o->buf[o->n++] = *s;
	}
}

static void out_num(struct out *o, unsigned long v)
{
	char tmp[24];
	int i = sizeof(tmp) - 1;
	tmp[i] = '\0';
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	out_str(o, tmp + i);
}

/* count_path builds ALLOCOUNT_DIR/allocount.PID[suffix]; 0 if there is no directory. */
static int count_path(struct out *path, const char *suffix)
{
	const char *dir = env_lookup("ALLOCOUNT_DIR");
	if (dir == NULL || *dir == '\0')
		return 0;
	out_str(path, dir);
	out_str(path, "/allocount.");
	out_num(path, (unsigned long)getpid());
	out_str(path, suffix);
	if (path->overflow)
		return 0;
	path->buf[path->n] = '\0';
	return 1;
}

/* dump_to writes this image's counts to allocount.PID + suffix. */
static void dump_to(const char *suffix)
{
	struct out path = {.n = 0}, body = {.n = 0};
	if (!count_path(&path, suffix))
		return;

	/* "#comm NAME" first, so counts can be matched to processes by name. */
	char comm[32];
	int cfd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
	ssize_t cn = cfd >= 0 ? read(cfd, comm, sizeof(comm) - 1) : -1;
	if (cfd >= 0)
		close(cfd);
	if (cn > 0) {
		comm[cn] = '\0';
		out_str(&body, "#comm ");
		out_str(&body, comm); /* ends with its newline */
	}
	for (int f = 0; f < F_COUNT; f++) {
		unsigned long calls = atomic_load(&counters[f].calls);
		if (calls == 0)
			continue;
		out_str(&body, names[f]);
		out_str(&body, " ");
		out_num(&body, calls);
		out_str(&body, " ");
		out_num(&body, atomic_load(&counters[f].bytes));
		out_str(&body, " ");
		out_num(&body, atomic_load(&counters[f].null));
		out_str(&body, "\n");
	}

	int fd = open(path.buf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return;
	const char *p = body.buf;
	size_t n = body.n;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		p += w;
		n -= (size_t)w;
	}
	close(fd);
}

static void dump(void) { dump_to(""); }

/* A forked child that calls execve leaves its image, and these counters, behind: its calls
 * before the exec go to allocount.PID.exec (removed again if the exec fails), so a reader can
 * add them to the new image's allocount.PID, as a tracer that follows the PID sees them. */
static int (*real_execve)(const char *, char *const[], char *const[]);
static void (*real__exit)(int);

int execve(const char *file, char *const argv[], char *const envp[])
{
	dump_to(".exec");
	int r = real_execve(file, argv, envp);
	int saved = errno;
	struct out path = {.n = 0};
	if (count_path(&path, ".exec"))
		unlink(path.buf);
	errno = saved;
	return r;
}

/* _exit skips atexit handlers and destructors (shells leave this way): write the counts first. */
void _exit(int status)
{
	dump();
	real__exit(status);
	__builtin_unreachable();
}

void _Exit(int status)
{
	_exit(status);
}

static void atfork_child(void)
{
	for (int f = 0; f < F_COUNT; f++) {
		atomic_store(&counters[f].calls, 0);
		atomic_store(&counters[f].bytes, 0);
		atomic_store(&counters[f].null, 0);
	}
}

/* The atexit handler writes the file when the program calls exit(); the
 * destructor rewrites it (O_TRUNC) with the final counts, so whichever runs
 * last wins and the file is complete either way. */
static void at_exit_dump(void)
{
	dump();
}

__attribute__((constructor(101))) static void allocount_init(void)
{
	resolve();
	/* Resolved here, before any counting matters: dlsym may allocate. */
	real_execve = (int (*)(const char *, char *const[], char *const[]))dlsym(RTLD_NEXT, "execve");
	real__exit = (void (*)(int))dlsym(RTLD_NEXT, "_exit");
	pthread_atfork(NULL, NULL, atfork_child);
	atexit(at_exit_dump);
}

__attribute__((destructor(101))) static void allocount_fini(void)
{
	dump();
}
