// micro: the operations the Vigil benchmark times, and the paced load
// generators of its throughput ramp. Compiled at bench time by the harness
// (bench/harness), dynamically linked: dlopen needs the dynamic loader.
//
//   micro time OP BATCHES PER_BATCH [ARG]
//       run BATCHES batches of PER_BATCH operations; print one line per
//       batch: the batch's mean nanoseconds per operation.
//       OP: exec PATH (fork + execve + waitpid), open PATH (open + close),
//           dlopen PATH (dlopen RTLD_NOW + dlclose), mprotect (an anonymous
//           page RW -> RX -> RW), getpid (the raw syscall).
//   micro rate OP RATE SECONDS WORKERS [ARG]
//       run OP at RATE operations per second in total (0: as fast as
//       possible) for SECONDS, split over WORKERS processes; print
//       "ops N seconds S".
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
	double *out = calloc(batches, sizeof(double));
	if (!out)
		die("calloc");
	for (long b = 0; b < batches; b++) {
		double t0 = now_ns();
		for (long i = 0; i < per; i++)
			op();
		out[b] = (now_ns() - t0) / (double)per;
	}
	for (long b = 0; b < batches; b++)
		printf("%.1f\n", out[b]);
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

int main(int argc, char **argv)
{
	int rc = 2;
	if (argc >= 2 && !strcmp(argv[1], "time"))
		rc = cmd_time(argc, argv);
	else if (argc >= 2 && !strcmp(argv[1], "rate"))
		rc = cmd_rate(argc, argv);
	if (rc == 2)
		fprintf(stderr, "usage: micro time OP BATCHES PER_BATCH [PATH]\n"
				"       micro rate OP RATE SECONDS WORKERS [PATH]\n");
	return rc;
}
