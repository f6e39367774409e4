#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/sched.h>
#include <string.h>
#include <unistd.h>
#include "CSockFlowShims.h"

/* FILEID_KERNFS from include/linux/exportfs.h: cgroupfs exports kernfs node ids. */
#define SOCKFLOW_FILEID_KERNFS 0xfe

int sockflow_open_cgroup_by_id(int mount_fd, uint64_t cgroup_id)
{
	union {
		struct file_handle fh;
		char buf[sizeof(struct file_handle) + sizeof(uint64_t)];
	} h;

	h.fh.handle_bytes = sizeof(uint64_t);
	h.fh.handle_type = SOCKFLOW_FILEID_KERNFS;
	memcpy(h.fh.f_handle, &cgroup_id, sizeof(cgroup_id));
	return open_by_handle_at(mount_fd, &h.fh, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

int sockflow_gettid(void)
{
	return gettid();
}

int sockflow_setns(int fd, int nstype)
{
	return setns(fd, nstype);
}

int sockflow_clone_newnet(void)
{
	return CLONE_NEWNET;
}

int sockflow_vasprintf(char **out, const char *format, va_list args)
{
	return vasprintf(out, format, args);
}

int sockflow_spawn_in_cgroup(int cgroup_fd, char *const argv[], int stdout_fd, int *pid, int *pidfd)
{
	struct clone_args args;
	int report[2], err = 0, fd = -1;
	long child;
	ssize_t n;

	if (pipe2(report, O_CLOEXEC))
		return -errno;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP | CLONE_PIDFD;
	args.pidfd = (unsigned long)(uintptr_t)&fd;
	args.cgroup = (unsigned long)cgroup_fd;
	args.exit_signal = SIGCHLD;
	child = syscall(SYS_clone3, &args, sizeof(args));
	if (child < 0) {
		err = -errno;
		close(report[0]);
		close(report[1]);
		return err;
	}
	if (child == 0) {
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		if (stdout_fd >= 0)
			dup2(stdout_fd, 1);
		close(report[0]);
		execvp(argv[0], argv);
		err = errno;
		n = write(report[1], &err, sizeof(err));
		(void)n;
		_exit(127);
	}
	close(report[1]);
	n = read(report[0], &err, sizeof(err));
	close(report[0]);
	if (n == sizeof(err)) {
		waitpid((pid_t)child, NULL, 0);
		close(fd);
		return -err;
	}
	*pid = (int)child;
	*pidfd = fd;
	return 0;
}

int sockflow_pidfd_send_signal(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
