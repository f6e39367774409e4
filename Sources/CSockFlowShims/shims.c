#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
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
