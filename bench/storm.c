// SPDX-License-Identifier: Apache-2.0
/*
 * storm: a bounded loopback socket load, for sockflow's benchmarks.
 *
 *   storm -m conn   [-t THREADS] [-n CYCLES] [-T SECONDS] [-r RATE] [-w]
 *         per cycle: socket, connect, accept, [write+read 1 byte each way with -w],
 *         close client, close server
 *   storm -m listen ...   per cycle: socket, bind 127.0.0.1:0, listen, close
 *   storm -m udp    ...   per cycle: send one datagram, receive it
 *   storm -m syscall ...  per cycle: getppid(), a syscall that does nothing: what
 *                         every syscall on the machine pays for a syscall tracepoint
 *   storm -m latency -n N times each connect() of N loopback connections; prints
 *                         latency_median_ns, latency_p90_ns, latency_p99_ns too
 *   storm -m hold -n N    opens N connected pairs (2N flows), prints "holding N",
 *                         keeps them until stdin closes, then closes them all
 *
 * -t threads each run -n cycles (or until -T seconds); -r caps the total rate in
 * cycles/s. Every conn worker has its own listener on 127.0.0.{1..16} (16
 * destinations spread the 4-tuples, so ephemeral ports do not run out). Prints
 * one line: mode=.. threads=.. cycles=.. seconds=.. rate=.. utime=.. stime=.. errors=.. listeners=..
 * where rate is cycles/s over the run and utime/stime are this process's CPU
 * seconds (the kernel's share of any BPF program on the path lands in stime).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DESTS 16

static const char *mode = "conn";
static int threads = 1, with_data = 0;
static long cycles = 100000;
static double max_seconds = 10, rate_limit = 0;
static atomic_long done_cycles, errors;
static atomic_int stop;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int listener_on(const char *ip, int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	inet_pton(AF_INET, ip, &a.sin_addr);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 1024)) {
		perror("storm: listener");
		exit(2);
	}
	getsockname(fd, (struct sockaddr *)&a, &len);
	*port = ntohs(a.sin_port);
	return fd;
}

/* Paces one worker to its share of -r. */
static void pace(long i, double start)
{
	if (rate_limit <= 0)
		return;
	double due = start + i / (rate_limit / threads);
	double t = now();

	if (due > t)
		usleep((useconds_t)((due - t) * 1e6));
}

/* A listener on each of 127.0.0.1..DESTS, and the address to connect to it. */
static void listen_on_destinations(int lfd[DESTS], struct sockaddr_in dst[DESTS])
{
	for (int d = 0; d < DESTS; d++) {
		char ip[32];
		int port;

		snprintf(ip, sizeof(ip), "127.0.0.%d", d + 1);
		lfd[d] = listener_on(ip, &port);
		memset(&dst[d], 0, sizeof(dst[d]));
		dst[d].sin_family = AF_INET;
		dst[d].sin_port = htons(port);
		inet_pton(AF_INET, ip, &dst[d].sin_addr);
	}
}

static void *conn_worker(void *arg)
{
	int lfd[DESTS];
	struct sockaddr_in dst[DESTS];
	double start;
	char b = 'x';
	(void)arg;

	listen_on_destinations(lfd, dst);
	start = now();
	for (long i = 0; i < cycles && !atomic_load(&stop); i++) {
		int d = i % DESTS;
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), s;

		pace(i, start);
		if (c < 0 || connect(c, (struct sockaddr *)&dst[d], sizeof(dst[d]))) {
			atomic_fetch_add(&errors, 1);
			if (c >= 0)
				close(c);
			continue;
		}
		s = accept4(lfd[d], NULL, NULL, SOCK_CLOEXEC);
		if (s < 0) {
			atomic_fetch_add(&errors, 1);
			close(c);
			continue;
		}
		if (with_data) {
			if (write(c, &b, 1) != 1 || read(s, &b, 1) != 1 || write(s, &b, 1) != 1 || read(c, &b, 1) != 1)
				atomic_fetch_add(&errors, 1);
		}
		close(c);
		close(s);
		atomic_fetch_add(&done_cycles, 1);
		if ((i & 255) == 0 && now() - start > max_seconds)
			break;
	}
	for (int d = 0; d < DESTS; d++)
		close(lfd[d]);
	return NULL;
}

static void *listen_worker(void *arg)
{
	double start = now();
	(void)arg;

	for (long i = 0; i < cycles && !atomic_load(&stop); i++) {
		int port, fd;

		pace(i, start);
		fd = listener_on("127.0.0.1", &port);
		close(fd);
		atomic_fetch_add(&done_cycles, 1);
		if ((i & 255) == 0 && now() - start > max_seconds)
			break;
	}
	return NULL;
}

static void *udp_worker(void *arg)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int r = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	double start = now();
	char buf[64] = "storm";
	(void)arg;

	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	bind(r, (struct sockaddr *)&a, sizeof(a));
	getsockname(r, (struct sockaddr *)&a, &len);
	for (long i = 0; i < cycles && !atomic_load(&stop); i++) {
		pace(i, start);
		if (sendto(s, buf, 16, 0, (struct sockaddr *)&a, sizeof(a)) != 16 || recv(r, buf, sizeof(buf), 0) != 16)
			atomic_fetch_add(&errors, 1);
		atomic_fetch_add(&done_cycles, 1);
		if ((i & 255) == 0 && now() - start > max_seconds)
			break;
	}
	close(r);
	close(s);
	return NULL;
}

static void *syscall_worker(void *arg)
{
	double start = now();
	(void)arg;

	for (long i = 0; i < cycles && !atomic_load(&stop); i++) {
		pace(i, start);
		syscall(SYS_getppid); /* not getppid(): nothing may cache it */
		atomic_fetch_add(&done_cycles, 1);
		if ((i & 4095) == 0 && now() - start > max_seconds)
			break;
	}
	return NULL;
}

static int cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;

	return x < y ? -1 : x > y;
}

/* connect() latency: each call timed on its own, over n connections. */
static int latency(long n)
{
	int port, lfd = listener_on("127.0.0.1", &port);
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(port) };
	long *ns = calloc(n, sizeof(long)), done = 0;

	inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
	for (long i = 0; i < n; i++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), a;
		double t0 = now(), t1;

		if (connect(c, (struct sockaddr *)&dst, sizeof(dst))) {
			atomic_fetch_add(&errors, 1);
			close(c);
			continue;
		}
		t1 = now();
		a = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		ns[done++] = (long)((t1 - t0) * 1e9);
		close(c);
		close(a);
	}
	qsort(ns, done, sizeof(long), cmp_long);
	printf("mode=latency cycles=%ld errors=%ld latency_median_ns=%ld latency_p90_ns=%ld latency_p99_ns=%ld\n", done,
	       atomic_load(&errors), done ? ns[done / 2] : 0, done ? ns[done * 9 / 10] : 0, done ? ns[done * 99 / 100] : 0);
	return 0;
}

/* One worker's share of `hold`: n connected pairs until `release` reaches EOF. */
static void hold_worker(long n, int ready, int release)
{
	int lfd[DESTS], *fds = calloc(2 * n, sizeof(int));
	struct sockaddr_in dst[DESTS];
	char c = 'r';

	listen_on_destinations(lfd, dst);
	for (long i = 0; i < n; i++) {
		int d = i % DESTS;

		fds[2 * i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fds[2 * i] < 0 || connect(fds[2 * i], (struct sockaddr *)&dst[d], sizeof(dst[d]))) {
			perror("storm: connect");
			_exit(2);
		}
		fds[2 * i + 1] = accept4(lfd[d], NULL, NULL, SOCK_CLOEXEC);
		if (fds[2 * i + 1] < 0) {
			perror("storm: accept");
			_exit(2);
		}
	}
	if (write(ready, &c, 1) != 1)
		_exit(2);
	while (read(release, &c, 1) > 0)
		;
	for (long i = 0; i < 2 * n; i++)
		close(fds[i]);
	for (int d = 0; d < DESTS; d++)
		close(lfd[d]);
	_exit(0);
}

/* N connections (2N flows) open at once, for memory measurements, spread over
 * enough worker processes to stay under the per-process descriptor limit. */
static int hold(long n)
{
	struct rlimit rl;
	long per, workers;
	int ready[2], release[2];
	char c;

	getrlimit(RLIMIT_NOFILE, &rl);
	per = ((long)rl.rlim_cur - 256) / 2;
	if (per < 1)
		per = 1;
	workers = (n + per - 1) / per;
	if (pipe(ready) || pipe(release))
		return 2;
	for (long w = 0; w < workers; w++) {
		long mine = w == workers - 1 ? n - per * (workers - 1) : per;

		if (fork() == 0) {
			close(ready[0]);
			close(release[1]);
			hold_worker(mine, ready[1], release[0]);
		}
	}
	close(ready[1]);
	close(release[0]);
	for (long w = 0; w < workers; w++)
		if (read(ready[0], &c, 1) != 1)
			return 2;
	printf("holding %ld in %ld processes\n", n, workers);
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	close(release[1]);
	while (wait(NULL) > 0)
		;
	printf("released %ld\n", n);
	return 0;
}

int main(int argc, char **argv)
{
	pthread_t tid[64];
	void *(*fn)(void *);
	struct rusage ru;
	double t0, secs;
	int opt;

	while ((opt = getopt(argc, argv, "m:t:n:T:r:w")) != -1) {
		switch (opt) {
		case 'm': mode = optarg; break;
		case 't': threads = atoi(optarg); break;
		case 'n': cycles = atol(optarg); break;
		case 'T': max_seconds = atof(optarg); break;
		case 'r': rate_limit = atof(optarg); break;
		case 'w': with_data = 1; break;
		default:
			fprintf(stderr, "usage: storm -m conn|listen|udp|syscall [-t threads] [-n cycles] [-T seconds] [-r rate] [-w]\n");
			return 2;
		}
	}
	if (threads < 1 || threads > 64)
		threads = 1;
	if (!strcmp(mode, "hold"))
		return hold(cycles);
	if (!strcmp(mode, "latency"))
		return latency(cycles);
	fn = !strcmp(mode, "listen")  ? listen_worker
	     : !strcmp(mode, "udp")     ? udp_worker
	     : !strcmp(mode, "syscall") ? syscall_worker
					: conn_worker;
	alarm((unsigned)max_seconds + 30); /* bounded, whatever happens */
	t0 = now();
	for (int i = 0; i < threads; i++)
		pthread_create(&tid[i], NULL, fn, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(tid[i], NULL);
	secs = now() - t0;
	getrusage(RUSAGE_SELF, &ru);
	printf("mode=%s threads=%d cycles=%ld seconds=%.3f rate=%.0f utime=%.3f stime=%.3f errors=%ld listeners=%d\n",
	       mode, threads, atomic_load(&done_cycles), secs, atomic_load(&done_cycles) / secs,
	       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
	       atomic_load(&errors), !strcmp(mode, "conn") ? threads * DESTS : 0);
	return 0;
}
