// racer: an attacker running as the echo workload's user (nobody). It watches /tmp with inotify for
// the private directory of an echo run (udstrace-echo-*) and, from the moment it appears until
// SIGTERM, tries in a tight loop to replace the workload's binaries (rename, unlink, write, chmod,
// a FIFO or a symlink in their place) and to move the directory itself. It prints one line per
// attempt that succeeded ("WON ..."), then "dirs D attempts N won W".
// Used by cmd/udstrace's TestEchoBinariesRace and by the stress check "procs".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static long attempts, won;
static void result(int ok, const char *what, const char *path) {
	attempts++;
	if (ok) {
		won++;
		printf("WON %s %s\n", what, path);
		fflush(stdout);
	}
}

static void attack(const char *dir) {
	static const char *names[] = {"echo-client", "echo-server"};
	char p[4096], q[4096];
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, names[i]);
		snprintf(q, sizeof q, "%s/%s.evil", dir, names[i]);
		result(rename(p, q) == 0, "rename", p);
		result(unlink(p) == 0, "unlink", p);
		int fd = open(p, O_WRONLY | O_NOFOLLOW);
		result(fd >= 0, "open-for-write", p);
		if (fd >= 0) close(fd);
		result(chmod(p, 0777) == 0, "chmod", p);
		result(mkfifo(q, 0777) == 0, "mkfifo", q);
		result(symlink("/bin/false", q) == 0, "symlink", q);
		result(rename(q, p) == 0, "rename-over", p);
	}
	snprintf(q, sizeof q, "%s.moved", dir);
	result(rename(dir, q) == 0, "rename-dir", dir);
	if (access(q, F_OK) == 0) rename(q, dir); // put it back: the run must go on to be judged
	snprintf(q, sizeof q, "%s/work", dir);
	snprintf(p, sizeof p, "%s/work.moved", dir);
	result(rename(q, p) == 0, "rename-work", q);
}

int main(void) {
	signal(SIGTERM, on_term);
	int in = inotify_init1(IN_NONBLOCK);
	if (in < 0 || inotify_add_watch(in, "/tmp", IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
		perror("inotify");
		return 1;
	}
	printf("watching\n");
	fflush(stdout);
	char dir[512] = "";
	long dirs = 0;
	char buf[4096] __attribute__((aligned(8)));
	while (!stop) {
		ssize_t n = read(in, buf, sizeof buf);
		for (char *c = buf; n > 0 && c < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)c;
			if (ev->len && strncmp(ev->name, "udstrace-echo-", 14) == 0 && !strstr(ev->name, ".moved")) {
				char next[512];
				snprintf(next, sizeof next, "/tmp/%.200s", ev->name);
				if (strcmp(next, dir) != 0) dirs++; // not the one it moved back
				strcpy(dir, next);
			}
			c += sizeof *ev + ev->len;
		}
		if (dir[0]) attack(dir);
		else usleep(100);
	}
	printf("dirs %ld attempts %ld won %ld\n", dirs, attempts, won);
	return 0;
}
