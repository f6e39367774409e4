/* SPDX-License-Identifier: (GPL-2.0 OR BSD-3-Clause) */
/*
 * The kernel/user contract of sockflow: the records the BPF programs write into
 * the ring buffer, the per-socket state they keep, and the load-time config.
 *
 * This is the only definition. bpf/sockflow.bpf.c includes it, Swift imports it
 * (module CSockFlowABI), and a test compares the layout Swift sees with the layout
 * in the BPF object's BTF (SockFlowTests/ABILayoutTests).
 *
 * Rules (after Tetragon's msg_common and bcc's tcpstates.h):
 * - every record starts with struct sf_hdr;
 * - fields are ordered largest first, padding is explicit, nothing is packed;
 * - kind numbers are explicit and never reused;
 * - units are in the names (_ns), ports are host order, addresses network order.
 */
#ifndef SOCKFLOW_ABI_H
#define SOCKFLOW_ABI_H

#include <linux/types.h>

#define SF_ABI_VERSION 1
#define SF_COMM_LEN 16
#define SF_EXE_NAME_LEN 48
#define SF_MAX_FILTER_PORTS 64

/* Record kinds. Never renumber; new kinds take the next free number. */
enum sf_kind {
	SF_KIND_LISTEN = 1,      /* a TCP socket started listening (process context)        */
	SF_KIND_CONNECT = 2,     /* an outbound TCP connect, before the SYN (process context) */
	SF_KIND_ESTABLISHED = 3, /* handshake done, active or passive (softirq for passive)   */
	SF_KIND_ACCEPT = 4,      /* accept()/accept4() returned this socket (process context) */
	SF_KIND_CLOSE = 5,       /* a reported flow reached TCP_CLOSE                        */
};

/* What a tracked socket is to sockflow (struct sf_flow_state.role, struct sf_event.role). */
enum sf_role {
	SF_ROLE_NONE = 0,
	SF_ROLE_LISTENER = 1,
	SF_ROLE_OUTBOUND = 2,
	SF_ROLE_INBOUND = 3,
};

/* struct sf_sock.flags */
enum sf_sock_flags {
	SF_SOCK_V6ONLY = 1 << 0, /* IPV6_V6ONLY set: an AF_INET6 listener that takes no IPv4 */
};

/* struct sf_task.flags */
enum sf_task_flags {
	SF_TASK_VALID = 1 << 0,   /* the fields were taken from a task in process context */
	SF_TASK_KTHREAD = 1 << 1, /* ... and that task was a kernel thread                */
	SF_TASK_OWNER = 1 << 2,   /* only pid, tid and comm: the owner kept with the flow */
};

/* struct sf_event.close_flags: what the kernel knew about the end of a flow */
enum sf_close_flags {
	SF_CLOSE_FIN_RCVD = 1 << 0,  /* the peer's FIN is counted in bytes_received */
	SF_CLOSE_FIN_ACKED = 1 << 1, /* our FIN is counted in bytes_acked           */
};

/* Common header of every record (24 bytes). */
struct sf_hdr {
	__u64 ts_ns;   /* CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) */
	__u64 lost;    /* records the kernel failed to reserve before this one, since load */
	__u16 kind;    /* enum sf_kind */
	__u16 size;    /* sizeof the whole record */
	__u32 cpu;
};

/* A socket's identity and endpoints (56 bytes). */
struct sf_sock {
	__u64 cookie;      /* socket cookie: the flow identity */
	__u8 laddr[16];    /* network order; IPv4 in the first 4 bytes */
	__u8 raddr[16];
	__u32 netns;       /* inode number of the network namespace */
	__u16 lport;       /* host order */
	__u16 rport;       /* host order; 0 when there is no peer */
	__u16 family;      /* AF_INET or AF_INET6 */
	__u8 protocol;     /* IPPROTO_TCP */
	__u8 flags;        /* enum sf_sock_flags */
	__u32 pad;
};

/* The task that did something, taken in process context (128 bytes). */
struct sf_task {
	__u64 start_ns;    /* thread-group leader's start_boottime: tells a reused pid apart */
	__u64 exec_id;     /* leader's self_exec_id: changes on execve() */
	__u64 cgroup_id;   /* cgroup v2 id (inode of the cgroup directory) */
	__u64 exe_ino;     /* inode of mm->exe_file */
	__u32 exe_dev;     /* its s_dev, kernel encoding: major << 20 | minor */
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 ppid;        /* real_parent's tgid */
	__u32 uid;         /* real uid */
	__u32 gid;         /* real gid */
	__u32 flags;       /* enum sf_task_flags */
	__u32 pad;
	char comm[SF_COMM_LEN];
	char exe_name[SF_EXE_NAME_LEN]; /* d_name of mm->exe_file, NUL-terminated, may be cut */
};

/* One ring-buffer record (256 bytes). Fields a kind does not use are zero. */
struct sf_event {
	struct sf_hdr hdr;
	struct sf_sock sock;
	struct sf_task task;        /* listen, connect, accept: current; established(out),
	                               close: the owner kept in socket storage, if any */
	__u64 start_ns;             /* when the flow started (listen/connect/established) */
	__u64 listener_cookie;      /* established(in), close(in): the listener's cookie */
	__u64 bytes_received;       /* close: tcp_sock.bytes_received (sequence space) */
	__u64 bytes_acked;          /* close: tcp_sock.bytes_acked (sequence space) */
	__u32 backlog;              /* listen: sk_max_ack_backlog */
	__s32 fd;                   /* accept: the new descriptor */
	__u16 sk_err;               /* close: sk_err (ECONNREFUSED, ETIMEDOUT, ECONNRESET, ...) */
	__u8 tcp_state;             /* close: the state it left; accept: the state it is in */
	__u8 role;                  /* enum sf_role */
	__u8 close_flags;           /* enum sf_close_flags */
	__u8 pad[3];
};

/* What the BPF side keeps per tracked socket, in a preallocated hash keyed by the
 * socket cookie (no allocation per socket): what a close record needs. */
struct sf_flow_state {
	__u64 listener_cookie; /* inbound: the listener the flow came from, 0 if unknown */
	__u64 start_ns;        /* listen, connect, or inbound handshake */
	__u32 pid;             /* listener, outbound: the owner, so a close can name it */
	__u32 tid;             /* even when the record that named it was lost           */
	char comm[SF_COMM_LEN];
	__u8 role;             /* enum sf_role */
	__u8 pad[7];
};

/* Listeners by where they listen, so a new inbound flow finds its listener:
 * exact address first, then the wildcard (0.0.0.0 or ::) of its family. */
struct sf_listener_key {
	__u8 addr[16];
	__u32 netns;
	__u16 port;
	__u16 family;
};

struct sf_listener {
	__u64 cookie; /* 0: more than one listener has this key (SO_REUSEPORT) */
};

/* Load-time knobs (const volatile in .rodata, set before load). */
struct sf_config {
	__u64 wakeup_interval_ns; /* 0: wake the reader on every record (libbpf default);
	                             else at most one forced wakeup per interval ...     */
	__u64 wakeup_bytes;       /* ... or when this much data waits in the ring        */
	__u32 filter_ports;       /* 1: only flows with a local or remote port in `ports` */
	__u32 filter_cgroup;      /* 1: tracepoints only for tasks under `scope`[0]       */
};

#endif /* SOCKFLOW_ABI_H */
