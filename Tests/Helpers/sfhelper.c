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
	int exit_now, fork_listen, listen_fork, wait_go;
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
	if (bind(fd, (struct sockaddr *)&ss, len))
		die("bind");
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

int main(int argc, char **argv)
{
	sigset_t none;

	/* A test runner may spawn us from a thread that blocks every signal: unblock,
	 * or SIGTERM from the test's cleanup would never arrive. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		fprintf(stderr, "usage: sfhelper listen|hostile ...\n");
		return 2;
	}
	if (!strcmp(argv[1], "listen"))
		return cmd_listen(argc - 2, argv + 2);
	if (!strcmp(argv[1], "burst") && argc > 2)
		return cmd_burst(atoi(argv[2]));
	if (!strcmp(argv[1], "hostile"))
		return cmd_hostile("/proc/self/exe");
	fprintf(stderr, "sfhelper: unknown mode %s\n", argv[1]);
	return 2;
}
