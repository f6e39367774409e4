/* Shims for calls Swift cannot make directly. Each says why it exists. */
#ifndef CSOCKFLOWSHIMS_H
#define CSOCKFLOWSHIMS_H
#include <stdarg.h>
#include <stdint.h>
/* Linux headers Glibc's Swift module leaves out. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>

/* open_by_handle_at(2) needs _GNU_SOURCE, which must not be defined in a header
 * Swift imports (it breaks fd_set against Dispatch). Opens the cgroup v2
 * directory whose id (kernfs node id = inode number) is `cgroup_id`, relative
 * to `mount_fd`. Returns an fd or -1 with errno set. */
int sockflow_open_cgroup_by_id(int mount_fd, uint64_t cgroup_id);

/* gettid() sits behind _GNU_SOURCE as well. */
int sockflow_gettid(void);

/* setns(2) too. Moves the calling thread into the namespace `fd` refers to. */
int sockflow_setns(int fd, int nstype);

/* vasprintf(3) (GNU): formats a libbpf message of any length. *out is malloc'ed. */
int sockflow_vasprintf(char **out, const char *format, va_list args);

/* Starts argv[0] (searched in PATH) as a new process born in the cgroup
 * `cgroup_fd` (clone3 with CLONE_INTO_CGROUP: it is never outside it, not even
 * for its first instruction). In the child: the signal mask is emptied and
 * SIGPIPE, SIGINT, SIGTERM reset to default (the parent blocks them for its
 * signalfd), stdout goes to `stdout_fd` when it is >= 0, then execvp. On success
 * returns 0 and sets *pid and *pidfd; on failure returns -errno (ENOENT: no such
 * command, reported by the child through a close-on-exec pipe). */
int sockflow_spawn_in_cgroup(int cgroup_fd, char *const argv[], int stdout_fd, int *pid, int *pidfd);

/* pidfd_send_signal(2). */
int sockflow_pidfd_send_signal(int pidfd, int sig);

/* A 4-byte store with release ordering: every store before it (the BPF .bss
 * fields of a policy generation) is visible to the kernel before this one. */
static inline void sockflow_store_release_u32(uint32_t *p, uint32_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* CLONE_NEWNET, which sched.h defines only under _GNU_SOURCE. */
int sockflow_clone_newnet(void);

#endif
