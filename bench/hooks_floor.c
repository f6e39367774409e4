// SPDX-License-Identifier: Apache-2.0
/*
 * hooks_floor OBJECT: loads bench/hooks_floor.bpf.c's empty programs, attaches
 * the sockops one to the cgroup v2 root (found in /proc/mounts) and the accept
 * tracepoints, prints "attached", and keeps them until stdin closes or a signal
 * comes. Links close with the process: nothing stays behind.
 */
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int cgroup2_root(char *path, size_t len)
{
	char dev[256], dir[4096], type[64];
	FILE *f = fopen("/proc/mounts", "r");
	int found = 0;

	if (!f)
		return -1;
	while (!found && fscanf(f, "%255s %4095s %63s %*[^\n]", dev, dir, type) == 3)
		if (!strcmp(type, "cgroup2")) {
			snprintf(path, len, "%s", dir);
			found = 1;
		}
	fclose(f);
	return found ? 0 : -1;
}

static void quit(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	char root[4096], c;
	int cg;

	if (argc != 2 || cgroup2_root(root, sizeof(root))) {
		fprintf(stderr, "usage: hooks_floor OBJECT (needs a cgroup2 mount)\n");
		return 2;
	}
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		fprintf(stderr, "hooks_floor: load %s failed\n", argv[1]);
		return 1;
	}
	cg = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	bpf_object__for_each_program(prog, obj) {
		struct bpf_link *link = bpf_program__type(prog) == BPF_PROG_TYPE_SOCK_OPS
						? bpf_program__attach_cgroup(prog, cg)
						: bpf_program__attach(prog);
		if (!link) {
			fprintf(stderr, "hooks_floor: attach %s failed\n", bpf_program__name(prog));
			return 1;
		}
	}
	signal(SIGINT, quit);
	signal(SIGTERM, quit);
	printf("attached\n");
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	bpf_object__close(obj);
	return 0;
}
