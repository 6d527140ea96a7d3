// micro: the operations the Vigil benchmark times, and the paced load
// generators of its throughput ramp. Compiled at bench time by the harness
// (bench/harness), dynamically linked: dlopen needs the dynamic loader.
//
//   micro time OP BATCHES PER_BATCH [ARG]
//       run BATCHES batches of PER_BATCH operations; print one line per
//       batch: the batch's mean wall-clock nanoseconds per operation, and
//       the mean CPU nanoseconds per operation the operation's own
//       processes spent (this process and its waited-for children, user
//       and system: getrusage). CPU time leaves out whatever else ran on
//       the CPU meanwhile (another process's work preempting this one).
//       OP: exec PATH (fork + execve + waitpid), open PATH (open + close),
//           dlopen PATH (dlopen RTLD_NOW + dlclose), mprotect (an anonymous
//           page RW -> RX -> RW), getpid (the raw syscall).
//   micro rate OP RATE SECONDS WORKERS [ARG]
//       run OP at RATE operations per second in total (0: as fast as
//       possible) for SECONDS, split over WORKERS processes; print
//       "ops N seconds S".
//   micro decide STAMP DIR SIZE SAMPLES
//       SAMPLES times: write a new file DIR/decide-PID-N, a copy of STAMP
//       padded with random bytes to SIZE (new content every time), exec
//       it in a child and time execve: until it fails, or until the new
//       image's first instruction (STAMP writes that time to fd 3). Print
//       one line per sample: "ok NS", "eperm NS" or "errno E NS". The
//       file is removed after each sample. One more sample first, not
//       printed: a warm-up, as for the other operations.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *arg;
static char *page;
static long pagesz;

static void die(const char *what)
{
	fprintf(stderr, "micro: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

// cpu_ns is the CPU time of this process and its waited-for children.
// The kernel derives the sum of user and system time from the scheduler's
// runtime, so the total is exact (only its split is sampled).
static double cpu_ns(void)
{
	struct rusage self, kids;
	if (getrusage(RUSAGE_SELF, &self) < 0 || getrusage(RUSAGE_CHILDREN, &kids) < 0)
		die("getrusage");
	double us = 0;
	struct timeval *tv[] = {&self.ru_utime, &self.ru_stime, &kids.ru_utime, &kids.ru_stime};
	for (int i = 0; i < 4; i++)
		us += (double)tv[i]->tv_sec * 1e6 + (double)tv[i]->tv_usec;
	return us * 1e3;
}

static void op_exec(void)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char *argv[] = {(char *)arg, NULL};
		char *envp[] = {NULL};
		execve(arg, argv, envp);
		_exit(127);
	}
	int st;
	if (waitpid(pid, &st, 0) < 0)
		die("waitpid");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "micro: %s: exit status %d\n", arg, st);
		exit(1);
	}
}

static void op_open(void)
{
	int fd = open(arg, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open");
	close(fd);
}

static void op_dlopen(void)
{
	void *h = dlopen(arg, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "micro: dlopen %s: %s\n", arg, dlerror());
		exit(1);
	}
	if (dlclose(h) != 0) {
		fprintf(stderr, "micro: dlclose: %s\n", dlerror());
		exit(1);
	}
}

static void op_mprotect(void)
{
	if (mprotect(page, pagesz, PROT_READ | PROT_EXEC) != 0)
		die("mprotect rx");
	if (mprotect(page, pagesz, PROT_READ | PROT_WRITE) != 0)
		die("mprotect rw");
}

static void op_getpid(void)
{
	syscall(SYS_getpid);
}

static void (*pick(const char *name))(void)
{
	if (!strcmp(name, "exec"))
		return op_exec;
	if (!strcmp(name, "open"))
		return op_open;
	if (!strcmp(name, "dlopen"))
		return op_dlopen;
	if (!strcmp(name, "mprotect"))
		return op_mprotect;
	if (!strcmp(name, "getpid"))
		return op_getpid;
	fprintf(stderr, "micro: unknown operation %s\n", name);
	exit(2);
}

static int needs_arg(const char *name)
{
	return !strcmp(name, "exec") || !strcmp(name, "open") || !strcmp(name, "dlopen");
}

static void setup(const char *name, int argc, char **argv, int argi)
{
	if (needs_arg(name)) {
		if (argi >= argc) {
			fprintf(stderr, "micro: %s needs a path\n", name);
			exit(2);
		}
		arg = argv[argi];
	}
	pagesz = sysconf(_SC_PAGESIZE);
	page = mmap(NULL, pagesz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		die("mmap");
	page[0] = 1;
}

static int cmd_time(int argc, char **argv)
{
	if (argc < 5)
		return 2;
	void (*op)(void) = pick(argv[2]);
	long batches = atol(argv[3]), per = atol(argv[4]);
	if (batches <= 0 || per <= 0)
		return 2;
	setup(argv[2], argc, argv, 5);
	op(); // warm up: caches, the first dlopen's symbol lookups
	double *out = calloc(2 * batches, sizeof(double));
	if (!out)
		die("calloc");
	for (long b = 0; b < batches; b++) {
		double c0 = cpu_ns(), t0 = now_ns();
		for (long i = 0; i < per; i++)
			op();
		double t1 = now_ns(), c1 = cpu_ns();
		out[2 * b] = (t1 - t0) / (double)per;
		out[2 * b + 1] = (c1 - c0) / (double)per;
	}
	for (long b = 0; b < batches; b++)
		printf("%.1f %.1f\n", out[2 * b], out[2 * b + 1]);
	return 0;
}

// pace runs op at rate per second for secs (rate 0: unpaced) and returns
// the number of operations done.
static long pace(void (*op)(void), double rate, double secs)
{
	double start = now_ns(), end = start + secs * 1e9;
	long done = 0;
	for (;;) {
		double t = now_ns();
		if (t >= end)
			break;
		if (rate <= 0) {
			for (int i = 0; i < 16; i++)
				op();
			done += 16;
			continue;
		}
		long due = (long)((t - start) * rate / 1e9) + 1;
		if (done >= due) {
			struct timespec ts = {0, 200000}; // 0.2 ms
			nanosleep(&ts, NULL);
			continue;
		}
		// Catch up in bounded chunks so the deadline is checked often.
		for (long n = 0; done < due && n < 4096; n++, done++)
			op();
	}
	return done;
}

static int cmd_rate(int argc, char **argv)
{
	if (argc < 6)
		return 2;
	void (*op)(void) = pick(argv[2]);
	double rate = atof(argv[3]), secs = atof(argv[4]);
	int workers = atoi(argv[5]);
	if (workers <= 0 || secs <= 0)
		return 2;
	setup(argv[2], argc, argv, 6);
	int fds[2];
	if (pipe(fds) != 0)
		die("pipe");
	double t0 = now_ns();
	for (int w = 0; w < workers; w++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			close(fds[0]);
			long n = pace(op, rate / workers, secs);
			if (write(fds[1], &n, sizeof(n)) != sizeof(n))
				_exit(1);
			_exit(0);
		}
	}
	close(fds[1]);
	long total = 0, n;
	while (read(fds[0], &n, sizeof(n)) == sizeof(n))
		total += n;
	int st, failed = 0;
	while (wait(&st) > 0)
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed = 1;
	printf("ops %ld seconds %.3f\n", total, (now_ns() - t0) / 1e9);
	return failed;
}

// fill writes n pseudo-random bytes (splitmix64 from a random seed) to fd.
static void fill(int fd, long n)
{
	static unsigned char buf[1 << 16];
	unsigned long long x;
	if (getrandom(&x, sizeof x, 0) != sizeof x)
		die("getrandom");
	while (n > 0) {
		for (size_t i = 0; i + 8 <= sizeof buf; i += 8) {
			unsigned long long z = (x += 0x9e3779b97f4a7c15ULL);
			z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
			z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
			z ^= z >> 31;
			memcpy(buf + i, &z, 8);
		}
		long k = n < (long)sizeof buf ? n : (long)sizeof buf;
		if (write(fd, buf, k) != k)
			die("write");
		n -= k;
	}
}

static int cmd_decide(int argc, char **argv)
{
	if (argc < 6)
		return 2;
	const char *stamp = argv[2], *dir = argv[3];
	long size = atol(argv[4]), samples = atol(argv[5]);
	int sfd = open(stamp, O_RDONLY | O_CLOEXEC);
	if (sfd < 0)
		die(stamp);
	struct stat st;
	if (fstat(sfd, &st) != 0)
		die("fstat");
	char *img = malloc(st.st_size);
	if (!img || read(sfd, img, st.st_size) != st.st_size)
		die("read stamp");
	close(sfd);
	if (size < st.st_size) {
		fprintf(stderr, "micro: size %ld is smaller than %s (%ld bytes)\n", size, stamp, (long)st.st_size);
		return 1;
	}
	char path[4096];
	for (long i = -1; i < samples; i++) {
		snprintf(path, sizeof path, "%s/decide-%d-%ld", dir, getpid(), i + 1);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
		if (fd < 0)
			die(path);
		if (write(fd, img, st.st_size) != st.st_size)
			die("write");
		fill(fd, size - st.st_size);
		if (close(fd) != 0)
			die("close");
		int p[2];
		if (pipe2(p, O_CLOEXEC) != 0)
			die("pipe");
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			// fd 3 is the pipe in the new image; records are
			// {kind, ns, errno}: 0 execve called, 1 it failed, 2 the
			// image runs (written by stamp).
			if (dup2(p[1], 3) != 3)
				_exit(125);
			char *cargv[] = {path, NULL};
			char *envp[] = {NULL};
			long rec[3] = {0, (long)now_ns(), 0};
			if (write(3, rec, sizeof rec) != sizeof rec)
				_exit(125);
			execve(path, cargv, envp);
			int err = errno;
			rec[0] = 1, rec[1] = (long)now_ns(), rec[2] = err;
			if (write(3, rec, sizeof rec) != sizeof rec)
				_exit(125);
			_exit(126);
		}
		close(p[1]);
		long rec[3], t0 = -1, t1 = -1, kind = -1, err = 0;
		while (read(p[0], rec, sizeof rec) == sizeof rec) {
			if (rec[0] == 0)
				t0 = rec[1];
			else
				kind = rec[0], t1 = rec[1], err = rec[2];
		}
		close(p[0]);
		int ws;
		if (waitpid(pid, &ws, 0) < 0)
			die("waitpid");
		unlink(path);
		if (i < 0)
			continue; // the warm-up
		if (t0 < 0 || t1 < 0) {
			fprintf(stderr, "micro: sample %ld: no time from the child (status %d)\n", i, ws);
			return 1;
		}
		if (kind == 2)
			printf("ok %ld\n", t1 - t0);
		else if (err == EPERM || err == EACCES)
			printf("eperm %ld\n", t1 - t0);
		else
			printf("errno %ld %ld\n", err, t1 - t0);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	int rc = 2;
	if (argc >= 2 && !strcmp(argv[1], "time"))
		rc = cmd_time(argc, argv);
	else if (argc >= 2 && !strcmp(argv[1], "rate"))
		rc = cmd_rate(argc, argv);
	else if (argc >= 2 && !strcmp(argv[1], "decide"))
		rc = cmd_decide(argc, argv);
	if (rc == 2)
		fprintf(stderr, "usage: micro time OP BATCHES PER_BATCH [PATH]\n"
				"       micro rate OP RATE SECONDS WORKERS [PATH]\n"
				"       micro decide STAMP DIR SIZE SAMPLES\n");
	return rc;
}
