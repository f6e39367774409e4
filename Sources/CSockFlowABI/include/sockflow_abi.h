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
#define SF_EXE_NAME_LEN 40
#define SF_MAX_FILTER_PORTS 64

/* Record kinds. Never renumber; new kinds take the next free number. */
enum sf_kind {
	SF_KIND_LISTEN = 1,      /* a TCP socket started listening (process context)        */
	SF_KIND_CONNECT = 2,     /* an outbound TCP connect, before the SYN (process context) */
	SF_KIND_ESTABLISHED = 3, /* handshake done, active or passive (softirq for passive)   */
	SF_KIND_ACCEPT = 4,      /* accept()/accept4() returned this socket (process context) */
	SF_KIND_CLOSE = 5,       /* a reported flow reached TCP_CLOSE                        */
	SF_KIND_VERDICT = 6,     /* a policy rule denied (or logged) a call or a packet        */
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
	__u64 ts_ns;   /* CLOCK_MONOTONIC (bpf_ktime_get_ns, or TCP's tcp_clock_cache) */
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
	__u32 rule;                 /* verdict: index of the rule in its policy generation */
	__u16 sk_err;               /* close: sk_err (ECONNREFUSED, ETIMEDOUT, ECONNRESET, ...) */
	__u8 tcp_state;             /* close: the state it left; accept: the state it is in */
	__u8 role;                  /* enum sf_role */
	__u8 close_flags;           /* enum sf_close_flags */
	__u8 hook;                  /* verdict: enum sf_hook (one bit) */
	__u8 action;                /* verdict: enum sf_action */
	__u8 generation;            /* verdict: the policy generation that decided */
	__u8 pad[4];
};

/* What the BPF side keeps per tracked socket, keyed by the socket cookie, so a
 * close (or a verdict on a listener's SYN) can name what the record that opened
 * the flow named, even when that record was lost. Connections live in a direct-
 * mapped array (slot = cookie & conns_mask: no hashing, no locks, no allocation);
 * listeners in a small hash. */
struct sf_flow_state {
	__u64 cookie;          /* whose slot this is: a slot a newer socket took is not ours */
	__u64 listener_cookie; /* inbound: the listener the flow came from, 0 if unknown */
	__u64 start_ns;        /* listen, connect, or inbound handshake */
	__u32 pid;             /* listener, outbound: the owner, so a close can name it */
	__u32 tid;             /* even when the record that named it was lost           */
	char comm[SF_COMM_LEN];
	__u8 role;             /* enum sf_role */
	__u8 pad[15];          /* one cache line per slot */
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
	__u32 count;  /* listeners with this key */
	__u32 pad;
};

/* ---- Policy: rules compiled by user space, evaluated by the enforcement programs ---- */

#define SF_MAX_RULES 1024
#define SF_RULE_PORTS 8
#define SF_RULE_CIDRS 8
#define SF_RULE_EXES 8
#define SF_RULE_IDS 8
#define SF_RULE_COMMS 4
#define SF_RULE_CGROUPS 4
#define SF_GENERATIONS 2 /* two copies: reload writes the idle one, then flips */

/* Where a rule applies. One bit each; the numbers are part of the ABI. */
enum sf_hook {
	SF_HOOK_LISTEN = 1 << 0,   /* cgroup/post_bind4/6, TCP: a denied process never holds the port */
	SF_HOOK_CONNECT = 1 << 1,  /* cgroup/connect4/6: TCP, and connected UDP */
	SF_HOOK_ACCEPT = 1 << 2,   /* cgroup_skb/ingress: the SYN of a new inbound TCP flow */
	SF_HOOK_UDP_SEND = 1 << 3, /* cgroup/sendmsg4/6: unconnected UDP sends */
	SF_HOOK_UDP_RECV = 1 << 4, /* cgroup_skb/ingress: UDP datagrams */
	SF_HOOK_SOCKET = 1 << 5,   /* cgroup/sock_create */
};
#define SF_HOOK_COUNT 6

enum sf_action {
	SF_ACTION_ALLOW = 1,
	SF_ACTION_DENY = 2,
	SF_ACTION_LOG = 3, /* allow, and report */
};

/* struct sf_rule.match: which parts of a rule are set (unset parts match anything) */
enum sf_match {
	SF_MATCH_LOCAL_PORTS = 1 << 0,
	SF_MATCH_LOCAL_CIDRS = 1 << 1,
	SF_MATCH_REMOTE_PORTS = 1 << 2,
	SF_MATCH_REMOTE_CIDRS = 1 << 3,
	SF_MATCH_PROCESS = 1 << 4,     /* `process`, all of whose set fields must match */
	SF_MATCH_NOT_PROCESS = 1 << 5, /* `process.not`, which must not match */
};

/* struct sf_process_match.fields */
enum sf_process_field {
	SF_PROC_EXE = 1 << 0,
	SF_PROC_COMM = 1 << 1,
	SF_PROC_UID = 1 << 2,
	SF_PROC_GID = 1 << 3,
	SF_PROC_CGROUP = 1 << 4,
};

struct sf_port_range {
	__u16 lo; /* host order, inclusive */
	__u16 hi;
};

/* An address matches when (address & mask) == net, in the family's normalized form:
 * IPv4 (and IPv4-mapped IPv6) in the first 4 bytes, IPv6 in 16. */
struct sf_cidr {
	__u8 net[16];
	__u8 mask[16];
	__u16 family; /* AF_INET or AF_INET6 */
	__u8 pad[6];
};

struct sf_endpoint_match {
	struct sf_port_range ports[SF_RULE_PORTS];
	struct sf_cidr cidrs[SF_RULE_CIDRS];
	__u8 nports;
	__u8 ncidrs;
	__u8 pad[6];
};

struct sf_exe_id {
	__u64 ino;
	__u32 dev; /* kernel encoding: major << 20 | minor */
	__u32 pad;
};

struct sf_cgroup_match {
	__u64 id;    /* the cgroup's id ... */
	__u32 level; /* ... at this depth under the root (1: a child of the root) */
	__u32 pad;
};

struct sf_process_match {
	struct sf_exe_id exe[SF_RULE_EXES];
	struct sf_cgroup_match cgroup[SF_RULE_CGROUPS];
	__u32 uid[SF_RULE_IDS];
	__u32 gid[SF_RULE_IDS];
	char comm[SF_RULE_COMMS][SF_COMM_LEN];
	__u32 fields; /* enum sf_process_field */
	__u8 nexe;
	__u8 ncgroup;
	__u8 nuid;
	__u8 ngid;
	__u8 ncomm;
	__u8 pad[7];
};

struct sf_rule {
	struct sf_endpoint_match local;
	struct sf_endpoint_match remote;
	struct sf_process_match process;
	struct sf_process_match not_process;
	__u32 hooks;    /* enum sf_hook bits */
	__u32 match;    /* enum sf_match bits */
	__u8 action;    /* enum sf_action */
	__u8 protocol;  /* 0: any, IPPROTO_TCP, IPPROTO_UDP */
	__u16 family;   /* 0: any, AF_INET, AF_INET6 */
	__u8 pad[4];
};

/* The rules of one hook in one generation, in policy order (first match wins). */
struct sf_hook_rules {
	__u32 count;
	__u16 index[SF_MAX_RULES];
	__u8 pad[4];
};

/* Load-time knobs (const volatile in .rodata, set before load). */
struct sf_config {
	__u64 wakeup_interval_ns; /* 0: wake the reader on every record (libbpf default);
	                             else at most one forced wakeup per interval ...     */
	__u64 wakeup_bytes;       /* ... or when this much data waits in the ring        */
	__u32 filter_ports;       /* 1: only flows with a local or remote port in `ports` */
	__u32 filter_cgroup;      /* 1: tracepoints only for tasks under `scope`[0]       */
	__u32 conns_mask;         /* slots in `conns` - 1 (a power of two)                */
	__u32 pad;
};

#endif /* SOCKFLOW_ABI_H */
