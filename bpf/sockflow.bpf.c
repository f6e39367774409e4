// SPDX-License-Identifier: (GPL-2.0 OR BSD-3-Clause)
/*
 * sockflow's kernel side: TCP listen, connect, established, accept and close,
 * each with the process that owns the socket, into one ring buffer.
 *
 * Only hooks that load on kernels without kprobes/fentry/LSM are used:
 *   sockops (attached to a cgroup v2)  TCP_LISTEN_CB, TCP_CONNECT_CB (process context),
 *                                      ACTIVE/PASSIVE_ESTABLISHED_CB, STATE_CB (any context)
 *   tracepoint syscalls:sys_exit_accept4 / sys_exit_accept  (process context)
 *
 * Attribution happens in process context only: the owner is taken at listen(),
 * connect() and when accept() returns, and written into those records; user space
 * keeps it with the flow. Code that may run in softirq (established, close) never
 * calls bpf_get_current_*(): it reports the socket, not a task.
 *
 * Per tracked socket the kernel keeps only what a close record needs, in a
 * preallocated hash keyed by the socket cookie: no allocation per socket (socket-
 * local storage cost about 2 us per connection cycle more, in kmalloc, memcg
 * charging, cloning and RCU frees).
 *
 * A new inbound flow finds its listener by (netns, port, address), exact then
 * wildcard. Only SO_REUSEPORT listeners, whose key several sockets share, get
 * socket storage created with BPF_F_CLONE: each child the kernel clones from such
 * a listener starts with a copy of its cookie, so the link stays exact there too.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sockflow_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile struct sf_config cfg = {};

/* Read by user space through the mmapped .bss. */
__u64 lost_total = 0;        /* records that found the ring buffer full */
__u64 untracked_sockets = 0; /* sockets the flows table had no room for: no close */
__u64 last_wakeup_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* user space sets the real size before load */
} events SEC(".maps");

/* Tracked sockets by cookie. User space sizes it before load (--max-flows + 1/8). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, __u64);
	__type(value, struct sf_flow_state);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 14);
	__type(key, struct sf_listener_key);
	__type(value, struct sf_listener);
} listeners SEC(".maps");

/* SO_REUSEPORT listeners only: their cookie, copied into every child. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, __u64);
} reuseport_parents SEC(".maps");

/* Process instances seen recently (tgid -> start time ^ exec count). The first
 * record of an instance wakes the reader at once, so it reads /proc while a
 * short-lived process (curl, a script) still exists. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SF_MAX_FILTER_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scope SEC(".maps");

static __always_inline bool port_selected(__u16 lport, __u16 rport)
{
	if (!cfg.filter_ports)
		return true;
	return bpf_map_lookup_elem(&ports, &lport) || bpf_map_lookup_elem(&ports, &rport);
}

/* Batched wakeups: with a wakeup interval set, the reader is woken at most once per
 * interval, or when the ring holds wakeup_bytes; in between it polls on a timer.
 * Waking the reader on every record costs the producer 2-3x (research/perf-anchors). */
static __always_inline __u64 wakeup_flags(__u64 now)
{
	if (!cfg.wakeup_interval_ns)
		return 0;
	if (now - last_wakeup_ns >= cfg.wakeup_interval_ns ||
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes) {
		last_wakeup_ns = now;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline struct sf_event *reserve(__u16 kind)
{
	struct sf_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(&lost_total, 1);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.lost = lost_total;
	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	e->hdr.cpu = bpf_get_smp_processor_id();
	return e;
}

static __always_inline void submit(struct sf_event *e)
{
	bpf_ringbuf_submit(e, wakeup_flags(e->hdr.ts_ns));
}

/* For records with a task from process context: wake the reader now if this
 * process instance is new to it. */
static __always_inline void submit_with_task(struct sf_event *e)
{
	__u64 instance = e->task.start_ns ^ (e->task.exec_id << 48);
	__u64 *seen = bpf_map_lookup_elem(&procs, &e->task.pid);

	if (seen && *seen == instance) {
		submit(e);
		return;
	}
	bpf_map_update_elem(&procs, &e->task.pid, &instance, BPF_ANY);
	if (cfg.wakeup_interval_ns)
		last_wakeup_ns = e->hdr.ts_ns;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

/* The current task, in process context only. */
static __always_inline void fill_task(struct sf_task *t)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_struct *leader = task->group_leader;
	const struct cred *cred = task->cred;
	struct mm_struct *mm = task->mm;

	t->pid = task->tgid;
	t->tid = task->pid;
	t->ppid = task->real_parent->tgid;
	t->uid = cred->uid.val;
	t->gid = cred->gid.val;
	t->start_ns = leader->start_boottime;
	t->exec_id = leader->self_exec_id;
	t->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	__builtin_memcpy(t->comm, task->comm, sizeof(t->comm));
	t->flags = SF_TASK_VALID | ((task->flags & PF_KTHREAD) ? SF_TASK_KTHREAD : 0);
	if (mm) {
		struct file *exe = mm->exe_file;

		if (exe) {
			t->exe_ino = exe->f_inode->i_ino;
			t->exe_dev = exe->f_inode->i_sb->s_dev;
			bpf_probe_read_kernel_str(t->exe_name, sizeof(t->exe_name),
						  exe->f_path.dentry->d_name.name);
		}
	}
}

static __always_inline __u32 ctx_u32(const __u32 *field)
{
	return *(const volatile __u32 *)field;
}

/* Endpoints of a full TCP socket from the sockops context. */
static __always_inline void fill_sock_ops(struct sf_sock *s, struct bpf_sock_ops *skops,
					  struct tcp_sock *tp)
{
	s->family = skops->family;
	s->protocol = IPPROTO_TCP;
	s->lport = skops->local_port;
	s->rport = bpf_ntohl(skops->remote_port);
	if (skops->family == AF_INET) {
		__u32 l = skops->local_ip4, r = skops->remote_ip4;

		__builtin_memcpy(s->laddr, &l, 4);
		__builtin_memcpy(s->raddr, &r, 4);
	} else {
		/* One 4-byte load per word: the verifier rejects the 8-byte loads
		 * clang would merge them into on bpf_sock_ops. */
		__u32 *l = (__u32 *)s->laddr, *r = (__u32 *)s->raddr;

		l[0] = ctx_u32(&skops->local_ip6[0]);
		l[1] = ctx_u32(&skops->local_ip6[1]);
		l[2] = ctx_u32(&skops->local_ip6[2]);
		l[3] = ctx_u32(&skops->local_ip6[3]);
		r[0] = ctx_u32(&skops->remote_ip6[0]);
		r[1] = ctx_u32(&skops->remote_ip6[1]);
		r[2] = ctx_u32(&skops->remote_ip6[2]);
		r[3] = ctx_u32(&skops->remote_ip6[3]);
	}
	if (tp) {
		struct sock *sk = &tp->inet_conn.icsk_inet.sk;

		s->netns = sk->__sk_common.skc_net.net->ns.inum;
		if (BPF_CORE_READ_BITFIELD(&sk->__sk_common, skc_ipv6only))
			s->flags |= SF_SOCK_V6ONLY;
	}
}

static __always_inline void track_state(struct bpf_sock_ops *skops)
{
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Starts tracking a socket: its close will be reported. In process context
 * (listen, connect) the current task is kept as the owner. */
static __always_inline bool track(struct bpf_sock_ops *skops, __u64 cookie, __u8 role, __u64 listener,
				  __u64 now, bool owner)
{
	struct sf_flow_state st = { .listener_cookie = listener, .start_ns = now, .role = role };

	if (owner) {
		struct task_struct *task = bpf_get_current_task_btf();

		st.pid = task->tgid;
		st.tid = task->pid;
		__builtin_memcpy(st.comm, task->comm, sizeof(st.comm));
	}

	if (bpf_map_update_elem(&flows, &cookie, &st, BPF_ANY)) {
		__sync_fetch_and_add(&untracked_sockets, 1);
		return false;
	}
	track_state(skops);
	return true;
}

static __always_inline void listener_key(struct sf_listener_key *k, const struct sf_sock *s)
{
	__builtin_memcpy(k->addr, s->laddr, 16);
	k->netns = s->netns;
	k->port = s->lport;
	k->family = s->family;
}

static __always_inline void register_listener(struct bpf_sock_ops *skops, struct bpf_sock *sk,
					      struct tcp_sock *tp, const struct sf_sock *s)
{
	struct sf_listener_key k = {};
	struct sf_listener v = { .cookie = s->cookie }, *old;

	listener_key(&k, s);
	old = bpf_map_lookup_elem(&listeners, &k);
	if (old && old->cookie != s->cookie)
		v.cookie = 0; /* a second listener on the same key */
	bpf_map_update_elem(&listeners, &k, &v, BPF_ANY);
	if (tp && BPF_CORE_READ_BITFIELD(&tp->inet_conn.icsk_inet.sk.__sk_common, skc_reuseport)) {
		__u64 *c = bpf_sk_storage_get(&reuseport_parents, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (c)
			*c = s->cookie;
	}
}

static __always_inline void unregister_listener(const struct sf_sock *s)
{
	struct sf_listener_key k = {};
	struct sf_listener *v;

	listener_key(&k, s);
	v = bpf_map_lookup_elem(&listeners, &k);
	if (v && v->cookie == s->cookie)
		bpf_map_delete_elem(&listeners, &k);
}

/* The owner kept with a flow, as a partial task (pid, tid, comm). */
static __always_inline void keep_owner(struct sf_task *t, const struct sf_flow_state *st)
{
	if (!st->pid)
		return;
	t->pid = st->pid;
	t->tid = st->tid;
	__builtin_memcpy(t->comm, st->comm, sizeof(t->comm));
	t->flags = SF_TASK_OWNER;
}

/* The listener a new inbound flow came from: exact address, then the wildcard. */
static __always_inline __u64 find_listener(struct bpf_sock *sk, const struct sf_sock *s)
{
	struct sf_listener_key k = {};
	struct sf_listener *v;
	__u64 *parent = bpf_sk_storage_get(&reuseport_parents, sk, 0, 0);

	if (parent)
		return *parent;
	listener_key(&k, s);
	v = bpf_map_lookup_elem(&listeners, &k);
	if (v)
		return v->cookie;
	__builtin_memset(k.addr, 0, 16);
	v = bpf_map_lookup_elem(&listeners, &k);
	return v ? v->cookie : 0;
}

static __always_inline int on_listen(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp;
	struct sf_event *e;
	__u64 cookie, now;

	if (!sk || !port_selected(skops->local_port, 0))
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	now = bpf_ktime_get_boot_ns();
	track(skops, cookie, SF_ROLE_LISTENER, 0, now, true);
	tp = bpf_skc_to_tcp_sock(sk);
	e = reserve(SF_KIND_LISTEN);
	if (!e)
		return 1;
	fill_sock_ops(&e->sock, skops, tp);
	e->sock.cookie = cookie;
	register_listener(skops, sk, tp, &e->sock);
	fill_task(&e->task);
	e->start_ns = now;
	e->role = SF_ROLE_LISTENER;
	if (tp)
		e->backlog = tp->inet_conn.icsk_inet.sk.sk_max_ack_backlog;
	submit_with_task(e);
	return 1;
}

static __always_inline int on_connect(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sf_event *e;
	__u64 cookie, now;

	if (!sk || !port_selected(skops->local_port, bpf_ntohl(skops->remote_port)))
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	now = bpf_ktime_get_boot_ns();
	track(skops, cookie, SF_ROLE_OUTBOUND, 0, now, true);
	e = reserve(SF_KIND_CONNECT);
	if (!e)
		return 1;
	fill_sock_ops(&e->sock, skops, bpf_skc_to_tcp_sock(sk));
	e->sock.cookie = cookie;
	fill_task(&e->task);
	e->start_ns = now;
	e->role = SF_ROLE_OUTBOUND;
	submit_with_task(e);
	return 1;
}

static __always_inline int on_active_established(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sf_flow_state *st;
	struct sf_event *e;
	__u64 cookie;

	if (!sk)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	st = bpf_map_lookup_elem(&flows, &cookie);
	if (!st || st->role != SF_ROLE_OUTBOUND)
		return 1; /* connect() was not seen: before sockflow started, or filtered */
	e = reserve(SF_KIND_ESTABLISHED);
	if (!e)
		return 1;
	fill_sock_ops(&e->sock, skops, bpf_skc_to_tcp_sock(sk));
	e->sock.cookie = cookie;
	e->start_ns = st->start_ns;
	e->role = SF_ROLE_OUTBOUND;
	keep_owner(&e->task, st);
	submit(e);
	return 1;
}

/* Runs in softirq: the current task is whoever the packet interrupted. */
static __always_inline int on_passive_established(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sf_event *e;
	struct sf_sock s = {};
	__u64 cookie, listener, now;

	if (!sk || !port_selected(skops->local_port, bpf_ntohl(skops->remote_port)))
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	now = bpf_ktime_get_boot_ns();
	fill_sock_ops(&s, skops, bpf_skc_to_tcp_sock(sk));
	s.cookie = cookie;
	listener = find_listener(sk, &s);
	track(skops, cookie, SF_ROLE_INBOUND, listener, now, false);
	e = reserve(SF_KIND_ESTABLISHED);
	if (!e)
		return 1;
	e->sock = s;
	e->start_ns = now;
	e->listener_cookie = listener;
	e->role = SF_ROLE_INBOUND;
	submit(e);
	return 1;
}

/* STATE_CB runs at the top of tcp_set_state(), before the socket is unhashed:
 * endpoints, counters and sk_err are still those of the flow. */
static __always_inline int on_close(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sf_flow_state *st;
	struct tcp_sock *tp;
	struct sf_event *e;
	__u64 cookie;

	if (!sk)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	st = bpf_map_lookup_elem(&flows, &cookie);
	if (!st)
		return 1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (st->role == SF_ROLE_LISTENER) {
		struct sf_sock s = {};

		fill_sock_ops(&s, skops, tp);
		s.cookie = cookie;
		unregister_listener(&s); /* even when the record below finds no room */
	}
	e = reserve(SF_KIND_CLOSE);
	if (e) {
		fill_sock_ops(&e->sock, skops, tp);
		e->sock.cookie = cookie;
		e->start_ns = st->start_ns;
		e->listener_cookie = st->listener_cookie;
		e->role = st->role;
		keep_owner(&e->task, st);
		e->tcp_state = skops->args[0];
		e->bytes_received = skops->bytes_received;
		e->bytes_acked = skops->bytes_acked;
		if (tp) {
			struct sock *s = &tp->inet_conn.icsk_inet.sk;
			__u8 old = skops->args[0];

			e->sk_err = s->sk_err;
			/* sk_shutdown cannot tell a received FIN from our own close(); SOCK_DONE can. */
			if (s->__sk_common.skc_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
				e->close_flags |= SF_CLOSE_FIN_RCVD;
			/* Our FIN went out in these states; it is acked once snd_una reaches write_seq. */
			if ((old == TCP_FIN_WAIT2 || old == TCP_CLOSING || old == TCP_LAST_ACK) &&
			    tp->snd_una == tp->write_seq)
				e->close_flags |= SF_CLOSE_FIN_ACKED;
		}
		submit(e);
	}
	/* a socket that listens again starts a new flow */
	bpf_map_delete_elem(&flows, &cookie);
	return 1;
}

SEC("sockops")
int handle_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		return on_listen(skops);
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		return on_connect(skops);
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		return on_active_established(skops);
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		return on_passive_established(skops);
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE)
			return on_close(skops);
		return 1;
	}
	return 1;
}

/* fd -> file -> socket -> sock of the current task. */
static __always_inline struct sock *fd_sock(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file **fds = fdt->fd;
	struct file *f = NULL;
	struct socket *so;

	if (fd >= fdt->max_fds)
		return NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	so = BPF_CORE_READ(f, private_data);
	if (!so)
		return NULL;
	return BPF_CORE_READ(so, sk);
}

static __always_inline int on_accept(long fd)
{
	struct task_struct *task;
	struct sf_event *e;
	struct sock *sk;
	__u16 family, lport, rport;

	if (fd < 0)
		return 0;
	if (cfg.filter_cgroup && bpf_current_task_under_cgroup(&scope, 0) != 1)
		return 0;
	task = bpf_get_current_task_btf();
	sk = fd_sock(task, fd);
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if ((family != AF_INET && family != AF_INET6) ||
	    BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!port_selected(lport, rport))
		return 0;

	e = reserve(SF_KIND_ACCEPT);
	if (!e)
		return 0;
	e->sock.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	e->sock.family = family;
	e->sock.protocol = IPPROTO_TCP;
	e->sock.lport = lport;
	e->sock.rport = rport;
	e->sock.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)e->sock.laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->sock.raddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)e->sock.laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)e->sock.raddr, sk, __sk_common.skc_v6_daddr);
	}
	e->tcp_state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->fd = fd;
	e->role = SF_ROLE_INBOUND;
	fill_task(&e->task);
	submit_with_task(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_accept4_exit(struct sf_sys_exit_ctx *ctx)
{
	return on_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_accept_exit(struct sf_sys_exit_ctx *ctx)
{
	return on_accept(ctx->ret);
}

/* Not loaded: keeps struct sf_event in the object's BTF, where the ABI layout test
 * compares it with the layout Swift imports from sockflow_abi.h. */
struct sf_event sf_abi_event SEC(".abi") __attribute__((used));
