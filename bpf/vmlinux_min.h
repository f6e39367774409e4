/* SPDX-License-Identifier: (GPL-2.0 OR BSD-3-Clause) */
/*
 * The kernel types sockflow's BPF programs read, declared with only the fields
 * they use. Under preserve_access_index libbpf relocates every access by field
 * name against the running kernel's BTF at load time (CO-RE), so order, offsets
 * and the fields left out do not matter, and nothing here depends on the build
 * machine's kernel. A field that a kernel lacks fails the load with a message
 * naming it ("failed to resolve CO-RE relocation ... struct sock.x").
 *
 * UAPI types (struct bpf_sock_ops, struct in6_addr, __u32 ...) come from the
 * system's linux headers.
 */
#ifndef SOCKFLOW_VMLINUX_MIN_H
#define SOCKFLOW_VMLINUX_MIN_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;
typedef _Bool bool;
#define true 1
#define false 0

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

typedef struct { s64 counter; } atomic64_t;
typedef struct { __u32 val; } kuid_t;
typedef struct { __u32 val; } kgid_t;

struct ns_common { unsigned int inum; };
struct net { struct ns_common ns; };
typedef struct { struct net *net; } possible_net_t;

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	unsigned char skc_reuse : 4;
	unsigned char skc_reuseport : 1;
	unsigned char skc_ipv6only : 1;
	unsigned char skc_net_refcnt : 1;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	atomic64_t skc_cookie;
	unsigned long skc_flags; /* sk_flags: bits of enum sock_flags */
};

enum sock_flags {
	SOCK_DEAD = 0,
	SOCK_DONE = 1, /* TCP: the peer's FIN was received (tcp_fin) */
};

/* sock_owned_by_user(): a process holds the socket's lock (lock_sock()) */
typedef struct { int owned; } socket_lock_t;

struct sock {
	struct sock_common __sk_common;
	socket_lock_t sk_lock;
	int sk_err;
	u8 sk_shutdown;
	u16 sk_protocol;
	u16 sk_type;
	u32 sk_max_ack_backlog;
	void *sk_bpf_storage; /* struct bpf_local_storage __rcu *: NULL until a map stores something */
};

struct inet_sock { struct sock sk; };
struct inet_connection_sock { struct inet_sock icsk_inet; };
struct request_sock;

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	u64 tcp_clock_cache;              /* tcp_mstamp_refresh(): ktime_get_ns() */
	struct request_sock *fastopen_rsk; /* a TCP Fast Open child before its final ACK */
	u32 rcv_nxt;
	u32 snd_una;
	u32 write_seq;
	u64 bytes_received;
	u64 bytes_acked;
};

struct socket { struct sock *sk; };

struct qstr { const unsigned char *name; };
struct dentry { struct qstr d_name; };
struct super_block { __u32 s_dev; };
struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
};
struct path { struct dentry *dentry; };
struct file {
	struct path f_path;
	struct inode *f_inode;
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};
struct files_struct { struct fdtable *fdt; };

struct mm_struct { struct file *exe_file; };
struct cred {
	kuid_t uid;
	kgid_t gid;
};
struct kernfs_node { u64 id; };
struct cgroup { struct kernfs_node *kn; };
struct css_set { struct cgroup *dfl_cgrp; };

struct nsproxy { struct net *net_ns; };

struct task_struct {
	unsigned int flags;
	int pid;
	int tgid;
	u64 start_boottime;
	u64 self_exec_id;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	const struct cred *cred;
	char comm[16];
	struct css_set *cgroups;
	struct mm_struct *mm;
	struct files_struct *files;
	struct nsproxy *nsproxy;
};

#pragma clang attribute pop

/* The record of a syscalls:sys_exit_* tracepoint (see its tracefs "format"). */
struct sf_sys_exit_ctx {
	unsigned short common_type;
	unsigned char common_flags;
	unsigned char common_preempt_count;
	int common_pid;
	int syscall_nr;
	long ret;
};

/* Constants from kernel headers that UAPI does not carry. */
#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PF_KTHREAD 0x00200000

/* Features the BPF verifier announces (Linux 6.17+); a kernel without the enum
 * has none of them: bpf_core_enum_value_exists() is then false. */
enum bpf_features {
	BPF_FEAT_RDONLY_CAST_TO_VOID = 0, /* bpf_rdonly_cast(ptr, 0): untyped, guarded loads */
};

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
};

#endif /* SOCKFLOW_VMLINUX_MIN_H */
