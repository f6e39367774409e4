// SPDX-License-Identifier: Apache-2.0
/*
 * sfhelper: the processes sockflow's integration tests watch. Each mode makes
 * real sockets, prints one "ready ..." line with what the test must know (pids,
 * ports), then waits for "close" on stdin (or EOF) before it cleans up.
 *
 *   sfhelper listen [--family 4|6|dual|6only] [--addr A] [--port P] [--backlog N]
 *                   [--name COMM] [--exit-now] [--fork-listen] [--listen-fork] [-- ARGS...]
 *   sfhelper hostile           re-executes itself as `listen` with hostile argv and comm
 *   sfhelper burst N           N times: socket, bind 127.0.0.1:0, listen, close; then "ready"
 *   sfhelper cburst N          one listener on 127.0.0.1:0, then N times: connect, accept,
 *                              write a byte each way, close both; then "ready pid=.. port=.."
 *   sfhelper serve [listen options] [--workers K] [--reply N] [--no-accept] [--reuseport]
 *                  accepts connections (in K pre-forked children that share the listener,
 *                  or itself when K is 0); per connection reads to EOF, writes N bytes,
 *                  closes, prints "conn pid=.. lport=.. rport=.. in=.. out=.."
 *   sfhelper connect --addr A --port P [--send N] [--linger0] [--hold-ms MS] [--syncnt N] [--bind-addr A]
 *                  [--fin-wait-ms MS]
 *                  prints "connected ..." or "error errno=E lport=L", then "done in=.. out=.. errno=E";
 *                  --fin-wait-ms: shutdown(SHUT_WR), wait MS, close() without reading
 *   sfhelper udp-send --addr A --port P [--connect]    prints "sent pid=.." or "error errno=E"
 *   sfhelper udp-recv [--port P] [--timeout-ms T]      prints "ready ..." then "got N" or "timeout"
 *   sfhelper socket --family 4|6 --type tcp|udp       prints "ok pid=.." or "error errno=E"
 *
 * --fork-listen   the parent creates and binds the socket, a forked child calls listen()
 * --listen-fork   the parent listens and forks; the parent exits, the child holds it
 * --exit-now      listen, print, exit at once (the kernel closes the socket)
 * --wait          bind and print "ready" first; listen() only after "go" on stdin
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "sfhelper: %s: %s\n", what, strerror(errno));
	exit(2);
}

struct listen_opts {
	const char *family;
	const char *addr;
	int port;
	int backlog;
	const char *name;
	int exit_now, fork_listen, listen_fork, wait_go, reuseport;
};

static int make_socket(const struct listen_opts *o, int *port_out)
{
	int v6 = strcmp(o->family, "4") != 0;
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_storage ss;
	socklen_t len;

	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (o->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
		die("SO_REUSEPORT");
	if (v6) {
		int v6only = strcmp(o->family, "6only") == 0 || (strcmp(o->family, "6") == 0);
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		if (strcmp(o->family, "dual") == 0)
			v6only = 0;
		if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)))
			die("IPV6_V6ONLY");
		memset(a, 0, sizeof(*a));
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(o->port);
		if (inet_pton(AF_INET6, o->addr ? o->addr : "::", &a->sin6_addr) != 1)
			die("address");
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		memset(a, 0, sizeof(*a));
		a->sin_family = AF_INET;
		a->sin_port = htons(o->port);
		if (inet_pton(AF_INET, o->addr ? o->addr : "127.0.0.1", &a->sin_addr) != 1)
			die("address");
		len = sizeof(*a);
	}
	if (bind(fd, (struct sockaddr *)&ss, len)) {
		/* a policy may refuse the bind: say so where the test reads */
		printf("error pid=%d errno=%d\n", getpid(), errno);
		fflush(stdout);
		exit(3);
	}
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	*port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						   : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

/* Waits for a line starting with `word` (or EOF) on stdin. */
static void wait_for(const char *word)
{
	char line[64];

	while (fgets(line, sizeof(line), stdin))
		if (strncmp(line, word, strlen(word)) == 0)
			return;
}

static void wait_for_close(void)
{
	wait_for("close");
}

static int cmd_listen(int argc, char **argv)
{
	struct listen_opts o = { .family = "4", .backlog = 16 };
	int fd, port;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--")) break;
		else if (!strcmp(argv[i], "--family") && i + 1 < argc) o.family = argv[++i];
		else if (!strcmp(argv[i], "--addr") && i + 1 < argc) o.addr = argv[++i];
		else if (!strcmp(argv[i], "--port") && i + 1 < argc) o.port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--backlog") && i + 1 < argc) o.backlog = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--name") && i + 1 < argc) o.name = argv[++i];
		else if (!strcmp(argv[i], "--exit-now")) o.exit_now = 1;
		else if (!strcmp(argv[i], "--fork-listen")) o.fork_listen = 1;
		else if (!strcmp(argv[i], "--listen-fork")) o.listen_fork = 1;
		else if (!strcmp(argv[i], "--wait")) o.wait_go = 1;
		else { fprintf(stderr, "sfhelper listen: unknown option %s\n", argv[i]); return 2; }
	}
	if (o.name)
		prctl(PR_SET_NAME, o.name, 0, 0, 0);
	fd = make_socket(&o, &port);

	if (o.fork_listen) {
		pid_t child = fork();

		if (child < 0)
			die("fork");
		if (child == 0) {
			prctl(PR_SET_NAME, "sfh-child", 0, 0, 0);
			if (listen(fd, o.backlog))
				die("listen");
			printf("ready pid=%d port=%d parent=%d\n", getpid(), port, getppid());
			fflush(stdout);
			wait_for_close();
			close(fd);
			_exit(0);
		}
		close(fd); /* the child holds the only descriptor */
		waitpid(child, NULL, 0);
		return 0;
	}
	if (o.wait_go) {
		printf("ready pid=%d port=%d\n", getpid(), port);
		fflush(stdout);
		wait_for("go");
	}
	if (listen(fd, o.backlog))
		die("listen");
	if (o.listen_fork) {
		pid_t parent = getpid();
		pid_t child = fork();

		if (child < 0)
			die("fork");
		if (child > 0)
			_exit(0); /* the parent leaves; the child owns the listener now */
		prctl(PR_SET_NAME, "sfh-child", 0, 0, 0);
		while (getppid() == parent)
			usleep(1000);
		printf("ready pid=%d port=%d parent=%d\n", getpid(), port, parent);
		fflush(stdout);
		wait_for_close();
		close(fd);
		return 0;
	}
	printf("%s pid=%d port=%d\n", o.wait_go ? "listening" : "ready", getpid(), port);
	fflush(stdout);
	if (o.exit_now)
		_exit(0);
	wait_for_close();
	close(fd);
	printf("closed\n");
	fflush(stdout);
	return 0;
}

/* argv and comm that try to break a JSON line or forge a record. */
static int cmd_hostile(char *self)
{
	char *argv[] = {
		"sfhelper", "listen", "--name", "x\"}\n{\"seq\":1", "--",
		"quote\" backslash\\ brace}",
		"new\nline\r\ttab",
		"\x01\x02\x1b[31mred\x7f",
		"\xff\xfe\xc3\x28 invalid utf-8 \xe2\x82",
		"{\"event\":\"listen\",\"forged\":true}",
		"\xe2\x80\xa8 line separator, \xf0\x9f\x90\x9b ok",
		NULL,
	};

	execv(self, argv);
	die("execv");
	return 2;
}

static int cmd_burst(int n)
{
	for (int i = 0; i < n; i++) {
		struct listen_opts o = { .family = "4", .backlog = 1 };
		int port, fd = make_socket(&o, &port);

		if (listen(fd, 1))
			die("listen");
		close(fd);
	}
	printf("ready pid=%d count=%d\n", getpid(), n);
	fflush(stdout);
	wait_for_close();
	return 0;
}

static int cmd_cburst(int n)
{
	struct listen_opts o = { .family = "4", .backlog = 16 };
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int port, lfd = make_socket(&o, &port);
	char b = 'x';

	if (listen(lfd, 16))
		die("listen");
	a.sin_port = htons(port);
	for (int i = 0; i < n; i++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), s;

		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
			die("connect");
		s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (s < 0)
			die("accept");
		if (write(c, &b, 1) != 1 || read(s, &b, 1) != 1 || write(s, &b, 1) != 1 || read(c, &b, 1) != 1)
			die("exchange");
		close(c);
		close(s);
	}
	close(lfd);
	printf("ready pid=%d port=%d count=%d\n", getpid(), port, n);
	fflush(stdout);
	wait_for_close();
	return 0;
}

static int local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		return -1;
	return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					      : ((struct sockaddr_in *)&ss)->sin_port);
}

static int peer_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getpeername(fd, (struct sockaddr *)&ss, &len))
		return -1;
	return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					      : ((struct sockaddr_in *)&ss)->sin_port);
}

static int io_errno; /* the errno that stopped write_n or read_all */

static long write_n(int fd, long n)
{
	char buf[4096];
	long done = 0;

	memset(buf, 'y', sizeof(buf));
	while (done < n) {
		ssize_t w = write(fd, buf, n - done < (long)sizeof(buf) ? (size_t)(n - done) : sizeof(buf));

		if (w < 0) {
			if (errno == EINTR)
				continue;
			io_errno = errno;
			break;
		}
		done += w;
	}
	return done;
}

static long read_all(int fd)
{
	char buf[4096];
	long total = 0;
	ssize_t r;

	while ((r = read(fd, buf, sizeof(buf))) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			io_errno = errno;
			break;
		}
		total += r;
	}
	return total;
}

/* One accepted connection: read to EOF, reply, close. */
static void serve_one(int c, long reply)
{
	int lport = local_port(c), rport = peer_port(c);
	long in = read_all(c), out = write_n(c, reply);

	close(c);
	printf("conn pid=%d lport=%d rport=%d in=%ld out=%ld\n", getpid(), lport, rport, in, out);
	fflush(stdout);
}

static int cmd_serve(int argc, char **argv)
{
	struct listen_opts o = { .family = "4", .backlog = 64 };
	int workers = 0, no_accept = 0, fd, port;
	long reply = 0;
	pid_t kids[32];

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--family") && i + 1 < argc) o.family = argv[++i];
		else if (!strcmp(argv[i], "--addr") && i + 1 < argc) o.addr = argv[++i];
		else if (!strcmp(argv[i], "--port") && i + 1 < argc) o.port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--workers") && i + 1 < argc) workers = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--reply") && i + 1 < argc) reply = atol(argv[++i]);
		else if (!strcmp(argv[i], "--no-accept")) no_accept = 1;
		else if (!strcmp(argv[i], "--reuseport")) o.reuseport = 1;
		else { fprintf(stderr, "sfhelper serve: unknown option %s\n", argv[i]); return 2; }
	}
	if (workers > 32)
		workers = 32;
	fd = make_socket(&o, &port);
	if (listen(fd, o.backlog))
		die("listen");
	for (int k = 0; k < workers; k++) {
		kids[k] = fork();
		if (kids[k] < 0)
			die("fork");
		if (kids[k] == 0) {
			prctl(PR_SET_NAME, "sfh-worker", 0, 0, 0);
			prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
			for (;;) {
				int c = accept(fd, NULL, NULL);

				if (c >= 0)
					serve_one(c, reply);
			}
		}
	}
	printf("ready pid=%d port=%d workers=", getpid(), port);
	for (int k = 0; k < workers; k++)
		printf("%s%d", k ? "," : "", kids[k]);
	printf("\n");
	fflush(stdout);
	if (workers || no_accept) {
		wait_for_close();
	} else {
		struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
		char line[64];

		for (;;) {
			if (poll(p, 2, -1) < 0 && errno != EINTR)
				die("poll");
			if (p[0].revents & POLLIN) {
				int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);

				if (c >= 0)
					serve_one(c, reply);
			}
			if (p[1].revents & (POLLIN | POLLHUP)) {
				if (!fgets(line, sizeof(line), stdin) || !strncmp(line, "close", 5))
					break;
			}
		}
	}
	for (int k = 0; k < workers; k++) {
		kill(kids[k], SIGTERM);
		waitpid(kids[k], NULL, 0);
	}
	close(fd);
	printf("closed\n");
	fflush(stdout);
	return 0;
}

static int cmd_connect(int argc, char **argv)
{
	const char *addr = "127.0.0.1", *bind_addr = NULL;
	int port = 0, linger0 = 0, hold_ms = 0, syncnt = 0, fin_wait_ms = -1, fd, rc;
	long send_n = 0;
	struct sockaddr_storage ss;
	socklen_t len;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--addr") && i + 1 < argc) addr = argv[++i];
		else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--send") && i + 1 < argc) send_n = atol(argv[++i]);
		else if (!strcmp(argv[i], "--hold-ms") && i + 1 < argc) hold_ms = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--syncnt") && i + 1 < argc) syncnt = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--linger0")) linger0 = 1;
		else if (!strcmp(argv[i], "--fin-wait-ms") && i + 1 < argc) fin_wait_ms = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--bind-addr") && i + 1 < argc) bind_addr = argv[++i];
		else { fprintf(stderr, "sfhelper connect: unknown option %s\n", argv[i]); return 2; }
	}
	memset(&ss, 0, sizeof(ss));
	if (strchr(addr, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		if (inet_pton(AF_INET6, addr, &a->sin6_addr) != 1)
			die("address");
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		if (inet_pton(AF_INET, addr, &a->sin_addr) != 1)
			die("address");
		len = sizeof(*a);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	if (syncnt)
		setsockopt(fd, IPPROTO_TCP, TCP_SYNCNT, &syncnt, sizeof(syncnt));
	if (bind_addr) {
		struct sockaddr_in b = { .sin_family = AF_INET };

		inet_pton(AF_INET, bind_addr, &b.sin_addr);
		if (bind(fd, (struct sockaddr *)&b, sizeof(b)))
			die("bind");
	}
	rc = connect(fd, (struct sockaddr *)&ss, len);
	if (rc) {
		printf("error pid=%d errno=%d lport=%d\n", getpid(), errno, local_port(fd));
		fflush(stdout);
		close(fd);
		return 0;
	}
	printf("connected pid=%d lport=%d\n", getpid(), local_port(fd));
	fflush(stdout);
	if (hold_ms)
		usleep(hold_ms * 1000);
	if (linger0) {
		struct linger l = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
		close(fd);
		printf("done in=0 out=0\n");
		fflush(stdout);
		return 0;
	}
	if (fin_wait_ms >= 0) {
		/* our FIN out and acked (FIN_WAIT2 if the peer stays open), then close()
		 * without waiting for the peer's FIN */
		long out = write_n(fd, send_n);

		shutdown(fd, SHUT_WR);
		usleep(fin_wait_ms * 1000);
		close(fd);
		printf("done in=0 out=%ld\n", out);
		fflush(stdout);
		return 0;
	}
	{
		long out = write_n(fd, send_n), in;

		shutdown(fd, SHUT_WR);
		in = read_all(fd);
		close(fd);
		printf("done in=%ld out=%ld errno=%d\n", in, out, io_errno);
		fflush(stdout);
	}
	return 0;
}

static int parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(addr, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		*len = sizeof(*a);
		return inet_pton(AF_INET6, addr, &a->sin6_addr) == 1 ? AF_INET6 : -1;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;

	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	*len = sizeof(*a);
	return inet_pton(AF_INET, addr, &a->sin_addr) == 1 ? AF_INET : -1;
}

static int cmd_udp_send(int argc, char **argv)
{
	const char *addr = "127.0.0.1";
	int port = 0, do_connect = 0, fd, family;
	struct sockaddr_storage ss;
	socklen_t len;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--addr") && i + 1 < argc) addr = argv[++i];
		else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--connect")) do_connect = 1;
		else { fprintf(stderr, "sfhelper udp-send: unknown option %s\n", argv[i]); return 2; }
	}
	family = parse_addr(addr, port, &ss, &len);
	if (family < 0)
		die("address");
	fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	if (do_connect) {
		if (connect(fd, (struct sockaddr *)&ss, len) || send(fd, "hello", 5, 0) != 5) {
			printf("error pid=%d errno=%d\n", getpid(), errno);
			return 0;
		}
	} else if (sendto(fd, "hello", 5, 0, (struct sockaddr *)&ss, len) != 5) {
		printf("error pid=%d errno=%d\n", getpid(), errno);
		return 0;
	}
	printf("sent pid=%d\n", getpid());
	return 0;
}

static int cmd_udp_recv(int argc, char **argv)
{
	int port = 0, timeout_ms = 2000, fd;
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	struct pollfd p;
	char buf[256];

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc) timeout_ms = atoi(argv[++i]);
		else { fprintf(stderr, "sfhelper udp-recv: unknown option %s\n", argv[i]); return 2; }
	}
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	a.sin_port = htons(port);
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
		die("bind");
	getsockname(fd, (struct sockaddr *)&a, &len);
	printf("ready pid=%d port=%d\n", getpid(), ntohs(a.sin_port));
	fflush(stdout);
	p.fd = fd;
	p.events = POLLIN;
	if (poll(&p, 1, timeout_ms) == 1)
		printf("got %zd\n", recv(fd, buf, sizeof(buf), 0));
	else
		printf("timeout\n");
	fflush(stdout);
	wait_for_close();
	return 0;
}

static int cmd_socket(int argc, char **argv)
{
	int family = AF_INET, type = SOCK_STREAM, fd;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--family") && i + 1 < argc) family = !strcmp(argv[++i], "6") ? AF_INET6 : AF_INET;
		else if (!strcmp(argv[i], "--type") && i + 1 < argc) type = !strcmp(argv[++i], "udp") ? SOCK_DGRAM : SOCK_STREAM;
		else { fprintf(stderr, "sfhelper socket: unknown option %s\n", argv[i]); return 2; }
	}
	fd = socket(family, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		printf("error pid=%d errno=%d\n", getpid(), errno);
	else
		printf("ok pid=%d\n", getpid());
	return 0;
}

int main(int argc, char **argv)
{
	sigset_t none;

	/* sfhelper --comm NAME MODE ...: start under another thread name */
	if (argc > 3 && !strcmp(argv[1], "--comm")) {
		prctl(PR_SET_NAME, argv[2], 0, 0, 0);
		argc -= 2;
		argv += 2;
	}

	/* A test runner may spawn us from a thread that blocks every signal: unblock,
	 * or SIGTERM from the test's cleanup would never arrive. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		fprintf(stderr, "usage: sfhelper listen|hostile|burst|serve|connect ...\n");
		return 2;
	}
	if (!strcmp(argv[1], "listen"))
		return cmd_listen(argc - 2, argv + 2);
	if (!strcmp(argv[1], "udp-send"))
		return cmd_udp_send(argc - 2, argv + 2);
	if (!strcmp(argv[1], "udp-recv"))
		return cmd_udp_recv(argc - 2, argv + 2);
	if (!strcmp(argv[1], "socket"))
		return cmd_socket(argc - 2, argv + 2);
	if (!strcmp(argv[1], "serve"))
		return cmd_serve(argc - 2, argv + 2);
	if (!strcmp(argv[1], "connect"))
		return cmd_connect(argc - 2, argv + 2);
	if (!strcmp(argv[1], "cburst") && argc > 2)
		return cmd_cburst(atoi(argv[2]));
	if (!strcmp(argv[1], "burst") && argc > 2)
		return cmd_burst(atoi(argv[2]));
	if (!strcmp(argv[1], "hostile"))
		return cmd_hostile("/proc/self/exe");
	fprintf(stderr, "sfhelper: unknown mode %s\n", argv[1]);
	return 2;
}
