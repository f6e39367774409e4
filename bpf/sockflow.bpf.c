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
 * Per tracked connection the kernel keeps only what a close record needs, in an
 * array slot chosen by the socket cookie (cookie & conns_mask). Cookies are handed
 * out in sequence, so live connections spread over the slots and neighbours share
 * cache lines. A slot records whose it is; a connection that outlived as many
 * newer sockets as there are slots finds its slot taken, and its close names what
 * user space kept. Measured per connection cycle (bpf_stats, 20k conn/s): socket-
 * local storage cost about 2 us more (kmalloc, memcg charge, clone, RCU free), a
 * preallocated hash about 1 us more in its updates and deletes alone (bucket
 * locks, freelist, accesses that miss the TLB in a large vmalloc'd map). Whether
 * a socket is tracked at all is its STATE_CB flag, set by us.
 * Listeners, few and long-lived, each claim a slot of an array of their own
 * (`lslots`), and go to a small hash by cookie only when a live one holds theirs.
 *
 * A new inbound flow finds its listener by (netns, port, address), exact then
 * wildcard, in a set-associative table (`lindex`) whose keys spill into a hash
 * only when their set is full. Only SO_REUSEPORT listeners, whose key several
 * sockets share, get socket storage created with BPF_F_CLONE: each child the
 * kernel clones from such a listener starts with a copy of its cookie, so the
 * link stays exact there too.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sockflow_abi.h"

/* Whether the CPU keeps a CPU's loads in program order (x86: TSO), which the
 * listener index's lock-free read relies on. */
#if defined(__TARGET_ARCH_x86)
#define SF_LOADS_ORDERED 1
#else
#define SF_LOADS_ORDERED 0
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile struct sf_config cfg = {};

/* Read by user space through the mmapped .bss. */
__u64 lost_total = 0;        /* records that found the ring buffer full */
__u64 untracked_sockets = 0; /* listeners the `listening` table had no room for */
__u64 last_wakeup_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* user space sets the real size before load */
} events SEC(".maps");

/* Tracked connections, direct-mapped by cookie. User space sets a power of two
 * (at least --max-flows) before load, and cfg.conns_mask to match. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__type(key, __u32);
	__type(value, struct sf_flow_state);
} conns SEC(".maps");

/*
 * Tracked listeners by cookie: their owner, for their close and for verdicts on
 * the connections they are sent. Direct-mapped by cookie like `conns`, but a
 * listener claims its slot (a compare-and-swap of the slot's cookie from 0) and
 * gives it back at its close, so a newer socket never takes a live listener's
 * slot. A listener whose slot another live one holds goes to the `listening`
 * hash. A preallocated hash costs each update, lookup and delete its jhash,
 * bucket lock and freelist: taking the three a listen cycle made out of it saved
 * 564 ns of the cycle's 3.6 us of program time (bpf_stats, 4 pairs).
 */
#define SF_LSLOTS 16384

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_LSLOTS);
	__type(key, __u32);
	__type(value, struct sf_flow_state);
} lslots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 14);
	__type(key, __u64);
	__type(value, struct sf_flow_state);
} listening SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 14);
	__type(key, struct sf_listener_key);
	__type(value, struct sf_listener);
} listeners SEC(".maps");

/*
 * Listeners by key (netns, port, address), where a new inbound flow finds its
 * listener: a set-associative table (`lindex`) of SF_LSETS sets of SF_LWAYS
 * ways, the set chosen by a hash of the key, read without a hash-map lookup.
 * A way holds a key, how many listeners have it, and their cookie (0 when
 * several do: SO_REUSEPORT). A key whose set has no free way spills into the
 * `listeners` hash, and the set counts its spilled keys: a lookup that finds no
 * way with its key asks the hash only then. A set with spilled keys takes no
 * new key into a way until they are gone, so a key is in one place only.
 * Listeners register and unregister under the set's lock (process context,
 * rare); a lookup reads the set without it and checks the set's sequence
 * number before and after.
 *
 * Measured under bpf_stats: leaving out the hash lookup on an inbound flow
 * saved 460-1230 ns per connection (jhash, bucket and element cache misses,
 * nested calls that each pay a return thunk here); an index in front of the
 * hash saved about 340 of it. Keeping the keys here instead of in the hash
 * then took its update and delete out of every listen cycle too: 600 ns less
 * program time per cycle (4 pairs, 551-795).
 */
#define SF_LSETS 4096
#define SF_LWAYS 3
#define SF_LINDEX_FOREVER 0xffffffff /* never given back: a listener whose close will not be seen */

struct sf_lway {
	struct sf_listener_key key;
	__u64 cookie; /* 0 when several listeners have the key */
};

struct sf_lset {
	struct bpf_spin_lock lock; /* writers only */
	__u32 seq;                 /* odd while a writer changes the set */
	__u32 spilled;             /* its keys' listeners in the hash, or FOREVER */
	__u32 n[SF_LWAYS];         /* listeners with the way's key; 0: the way is free */
	__u64 pad;                 /* two cache lines per set */
	struct sf_lway way[SF_LWAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_LSETS);
	__type(key, __u32);
	__type(value, struct sf_lset);
} lindex SEC(".maps");

/* SO_REUSEPORT listeners only: their cookie, copied into every child. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, __u64);
} reuseport_parents SEC(".maps");

/* Process instances seen recently, direct-mapped by tgid (tgid & 16383): the
 * first record of an instance wakes the reader at once, so it reads /proc while
 * a short-lived process (curl, a script) still exists. Two processes that share
 * a slot only cost each other an early wakeup. */
struct sf_proc_seen {
	__u32 pid;
	__u32 pad;
	__u64 instance; /* start time ^ exec count << 48 */
};

#define SF_PROC_SLOTS 16384

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_PROC_SLOTS);
	__type(key, __u32);
	__type(value, struct sf_proc_seen);
} procs SEC(".maps");

/* Submissions to the ring (a record, or a stage of them) each CPU made since it
 * last looked at how full the ring is. Its locked increment is also the barrier
 * wakeup_flags() needs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} since_query SEC(".maps");

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

/* Written by user space: 1 while the reader will pass again by itself, within
 * one wakeup interval. */
__u32 reader_active = 0;

/*
 * Batched wakeups. An active reader needs no wakeup: it passes on its own timer.
 * A wakeup costs the producer an IRQ-work self-interrupt and then a wakeup IPI
 * to the reader's CPU, both VM exits on this machine (about 1.1 µs per
 * connection at 3,500 connections/s, perf, 4 rounds). So while the reader is
 * active a record wakes it only when the ring holds wakeup_bytes. A reader that
 * sleeps until woken is woken by the first record after it said so (it clears
 * last_wakeup_ns), then at most once per interval.
 *
 * Called once the record is reserved in the ring, or while the producer holds
 * its stage. The locked add orders that reservation before the read of
 * reader_active; the reader orders its clearing of the flag before its last
 * read of the ring the same way. So a record submitted without a wakeup because
 * the flag still read set is one the reader finds reserved (it looks again), or
 * one in a stage its flush found taken (it looks again too).
 */
static __always_inline __u64 wakeup_flags(__u64 now)
{
	__u32 zero = 0, *n;

	if (!cfg.wakeup_interval_ns)
		return 0;
	n = bpf_map_lookup_elem(&since_query, &zero);
	if (!n)
		return BPF_RB_FORCE_WAKEUP;
	__sync_fetch_and_add(n, 1);
	/* signed: a record stamped with TCP's packet time can be a little older than
	 * the last wakeup another record made */
	if (!*(volatile __u32 *)&reader_active && (__s64)(now - last_wakeup_ns) >= (__s64)cfg.wakeup_interval_ns)
		goto wake;
	/* how full the ring is costs a helper call: asked every 16th record per CPU */
	if ((*n & 15) == 0 && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes)
		goto wake;
	return BPF_RB_NO_WAKEUP;
wake:
	last_wakeup_ns = now;
	return BPF_RB_FORCE_WAKEUP;
}

/* A zeroed record with its header, in the ring or in a stage. */
static __always_inline struct sf_event *start_record(struct sf_event *e, __u16 kind, __u64 now)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.ts_ns = now;
	e->hdr.lost = lost_total;
	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	e->hdr.cpu = bpf_get_smp_processor_id();
	return e;
}

static __always_inline struct sf_event *reserve_at(__u16 kind, __u64 now)
{
	struct sf_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(&lost_total, 1);
		return NULL;
	}
	return start_record(e, kind, now);
}

/* Records are stamped with CLOCK_MONOTONIC, the clock TCP keeps its own time in. */
static __always_inline __u64 sf_clock(void)
{
	return bpf_ktime_get_ns();
}

static __always_inline struct sf_event *reserve(__u16 kind)
{
	return reserve_at(kind, sf_clock());
}

static __always_inline void submit(struct sf_event *e)
{
	bpf_ringbuf_submit(e, wakeup_flags(e->hdr.ts_ns));
}

/* For records with a task from process context: whether this process instance
 * is new to the reader, which is then woken at once (it reads /proc while a
 * short-lived process still exists). */
static __always_inline bool new_instance(const struct sf_event *e)
{
	__u64 instance = e->task.start_ns ^ (e->task.exec_id << 48);
	__u32 slot = e->task.pid & (SF_PROC_SLOTS - 1);
	struct sf_proc_seen *seen = bpf_map_lookup_elem(&procs, &slot);

	if (!seen || (seen->pid == e->task.pid && seen->instance == instance))
		return false;
	seen->pid = e->task.pid;
	seen->instance = instance;
	if (cfg.wakeup_interval_ns)
		last_wakeup_ns = e->hdr.ts_ns;
	return true;
}

static __always_inline void submit_with_task(struct sf_event *e)
{
	if (new_instance(e))
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	else
		submit(e);
}

/*
 * Staging. A ring-buffer reserve and submit cost about 100 ns per record here
 * (two helper calls and the ring's lock, whose cache line moves between the
 * CPUs). While the reader is active (it has said it will look at the ring again
 * within one wakeup interval), the TCP records (listen, connect, established,
 * accept, close) are written into a per-CPU stage instead and handed to the ring eight
 * at a time with one bpf_ringbuf_output(). The reader hands over what is left
 * in the stages at the start of each of its passes (flush_stages below, run
 * from user space), so a record waits in a stage at most until the reader's
 * next pass, and no timer is needed. A reader about to sleep until woken says
 * so first, then flushes once more: from then on records go to the ring
 * directly and wake it as before. A program that interrupts another one on the
 * same CPU (softirq over process context), or finds the reader flushing, finds
 * the stage taken and goes to the ring directly. The records of different CPUs
 * therefore reach the ring out of time order; user space puts them back in
 * order (Sources/SockFlowCore/RecordReorder.swift).
 */
#define SF_STAGE_LEN 8

struct sf_stage {
	__u32 n;    /* records staged */
	__u32 busy; /* taken by an atomic exchange */
	struct sf_event ev[SF_STAGE_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sf_stage);
} stage SEC(".maps");

#define barrier() asm volatile("" ::: "memory")

/* Gives the stage back (its writes are done before the flag clears). */
static __always_inline void stage_release(struct sf_stage *s)
{
	barrier();
	s->busy = 0;
}

/* Hands the n staged records to the ring (caller holds the stage). */
static __always_inline void stage_flush(struct sf_stage *s, __u32 n, __u64 flags)
{
	s->n = 0;
	if (n == 0 || n > SF_STAGE_LEN)
		return;
	if (bpf_ringbuf_output(&events, s->ev, n * sizeof(struct sf_event), flags))
		__sync_fetch_and_add(&lost_total, n);
}

/* A record in this CPU's stage, or, when the stage is taken or the reader is
 * not active, in the ring (*sp stays NULL). Submit it with stage_submit(). */
static __always_inline struct sf_event *stage_reserve(__u16 kind, __u64 now, struct sf_stage **sp)
{
	struct sf_stage *s = NULL;
	__u32 zero = 0;

	*sp = NULL;
	if (cfg.wakeup_interval_ns)
		s = bpf_map_lookup_elem(&stage, &zero);
	if (!s || __sync_lock_test_and_set(&s->busy, 1))
		return reserve_at(kind, now);
	/* read after taking the stage: a reader that flushed after saying it
	 * sleeps took the stage after that too, so this sees it */
	if (!*(volatile __u32 *)&reader_active) {
		stage_release(s);
		return reserve_at(kind, now);
	}
	*sp = s;
	return start_record(&s->ev[s->n & (SF_STAGE_LEN - 1)], kind, now);
}

/* wake: the reader must see this record now (a process instance new to it). */
static __always_inline void stage_submit(struct sf_event *e, struct sf_stage *s, bool wake)
{
	__u32 n;

	if (!s) {
		bpf_ringbuf_submit(e, wake ? BPF_RB_FORCE_WAKEUP : wakeup_flags(e->hdr.ts_ns));
		return;
	}
	n = (s->n & (SF_STAGE_LEN - 1)) + 1;
	if (wake)
		stage_flush(s, n, BPF_RB_FORCE_WAKEUP);
	else if (n == SF_STAGE_LEN)
		stage_flush(s, n, wakeup_flags(e->hdr.ts_ns));
	else
		s->n = n;
	stage_release(s);
}

/* Casts a kernel pointer to a typed, read-only one (the verifier turns the call
 * into a move): loads through it are plain instructions the JIT guards against
 * faults, where a helper call (bpf_skc_to_tcp_sock, bpf_probe_read_kernel) costs
 * a call and a return, each dear with this CPU's return-thunk mitigations. */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id) __ksym;

/* Whether bpf_rdonly_cast(ptr, 0) gives an untyped pointer whose loads the JIT
 * guards against faults (Linux 6.17+). Resolved when the program is loaded; on
 * an older kernel the verifier never sees the branches that use it. */
#define SF_HAVE_VOID_CAST bpf_core_enum_value_exists(enum bpf_features, BPF_FEAT_RDONLY_CAST_TO_VOID)

/* A dentry's name into a 40-byte field, NUL-terminated, cut if longer: five
 * 8-byte loads through an untyped read-only pointer instead of
 * bpf_probe_read_kernel_str(), whose helper call and byte-by-byte copy cost more
 * than the rest of fill_task on this CPU (the helper stays for kernels without
 * the cast). A kernel with the cast (6.17+) keeps a name shorter than 40 bytes
 * inside the dentry (DNAME_INLINE_LEN, 40 on 64-bit since 6.14) and a longer one
 * in an allocation of its own, so all 40 bytes are there to read. The bytes
 * after the terminating NUL are cleared: an inline name buffer keeps what an
 * earlier, longer name left in it. */
_Static_assert(SF_EXE_NAME_LEN == 40, "copy_name copies five words");
static __always_inline void copy_name(char *dst, const unsigned char *name)
{
	const __u64 *src;
	__u64 *out = (__u64 *)dst, done = 0;

	if (!SF_HAVE_VOID_CAST) {
		bpf_probe_read_kernel_str(dst, SF_EXE_NAME_LEN, name);
		return;
	}
	src = bpf_rdonly_cast(name, 0);
#pragma unroll
	for (int i = 0; i < SF_EXE_NAME_LEN / 8; i++) {
		__u64 w = done ? 0 : src[i];
		/* lowest zero byte of w (little-endian): bytes after it may be flagged
		 * too, by the borrow, but never a byte before it */
		__u64 zero = (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;

		if (zero) {
			w &= ((zero & -zero) >> 7) - 1;
			done = 1;
		}
		out[i] = w;
	}
	dst[SF_EXE_NAME_LEN - 1] = 0;
}

/* The current task (bpf_get_current_task_btf(), a helper call: asked once per
 * program run), in process context only. */
static __always_inline void fill_task(struct sf_task *t, struct task_struct *task)
{
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
			copy_name(t->exe_name, exe->f_path.dentry->d_name.name);
		}
	}
}

/* A TCP socket's identity and endpoints, read from the socket itself: the same
 * code for every sockops op, accept and close. Inlined: as a subprogram its call
 * and return cost more than its body here (bench-profile, A/B of both builds
 * over 6 rounds: about 220 ns less per connection cycle inlined). */
static __always_inline void fill_sock(struct sf_sock *s, struct sock *sk)
{
	struct sock_common *skc = &sk->__sk_common;
	__u16 family = skc->skc_family;

	s->family = family;
	s->protocol = IPPROTO_TCP;
	s->lport = skc->skc_num;
	s->rport = bpf_ntohs(skc->skc_dport);
	s->netns = skc->skc_net.net->ns.inum;
	if (family == AF_INET) {
		__u32 l = skc->skc_rcv_saddr, r = skc->skc_daddr;

		__builtin_memcpy(s->laddr, &l, 4);
		__builtin_memcpy(s->raddr, &r, 4);
	} else {
		__builtin_memcpy(s->laddr, &skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(s->raddr, &skc->skc_v6_daddr, 16);
		if (BPF_CORE_READ_BITFIELD(skc, skc_ipv6only))
			s->flags |= SF_SOCK_V6ONLY;
	}
}

/* One 4-byte context load: the verifier rejects the 8-byte loads clang would
 * merge neighbouring __u32 fields into (bpf_sock_addr, bpf_sock). */
static __always_inline __u32 ctx_u32(const __u32 *field)
{
	return *(const volatile __u32 *)field;
}

/* The TCP socket behind a sockops context; NULL unless it is a full socket
 * (every op handled here comes with one). */
static __always_inline struct tcp_sock *skops_tcp(struct bpf_sock_ops *skops)
{
	if (!skops->is_fullsock)
		return NULL;
	return bpf_rdonly_cast(skops->sk, bpf_core_type_id_kernel(struct tcp_sock));
}

/* The socket's cookie: read where it is, generated by the helper only the first time. */
static __always_inline __u64 skops_cookie(struct bpf_sock_ops *skops, struct sock *sk)
{
	__u64 cookie = sk->__sk_common.skc_cookie.counter;

	return cookie ? cookie : bpf_get_socket_cookie(skops);
}

/* The time of an event TCP handles for a packet or a timer, without a clock read
 * (a helper call and a TSC read, about 85 ns here under bpf_stats).
 * TCP's receive path (tcp_rcv_established(), tcp_rcv_state_process() past
 * LISTEN) and its write and keepalive timers call tcp_mstamp_refresh() before
 * they act, which sets tcp_clock_cache to ktime_get_ns(), sf_clock()'s clock.
 * Callers use it only where one of those runs: a cache that was never set reads
 * the clock. */
static __always_inline __u64 tcp_time(const struct tcp_sock *tp)
{
	__u64 t = tp->tcp_clock_cache;

	return t ? t : sf_clock();
}

/* A child of a tracked listener has the flag already: the kernel copies it. */
static __always_inline void track_state(struct bpf_sock_ops *skops)
{
	__u32 flags = skops->bpf_sock_ops_cb_flags;

	if (!(flags & BPF_SOCK_OPS_STATE_CB_FLAG))
		bpf_sock_ops_cb_flags_set(skops, flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline bool tracked(const struct bpf_sock_ops *skops)
{
	return skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG;
}

/* What the kernel keeps about a flow, from process context (listen, connect: the
 * current task is the owner) or softirq (an inbound handshake: no owner yet,
 * `owner` is NULL). */
static __always_inline void keep_state(struct sf_flow_state *st, __u64 cookie, __u8 role, __u64 listener,
				       __u64 now, struct task_struct *owner)
{
	st->cookie = cookie;
	st->listener_cookie = listener;
	st->start_ns = now;
	st->role = role;
	if (owner) {
		st->pid = owner->tgid;
		st->tid = owner->pid;
		__builtin_memcpy(st->comm, owner->comm, sizeof(st->comm));
	} else {
		st->pid = 0;
		st->tid = 0;
		__builtin_memset(st->comm, 0, sizeof(st->comm));
	}
}

static __always_inline struct sf_flow_state *conn_slot(__u64 cookie)
{
	__u32 slot = cookie & cfg.conns_mask;

	return bpf_map_lookup_elem(&conns, &slot);
}

/* The state of a tracked connection, if its slot is still its own. */
static __always_inline struct sf_flow_state *conn_state(__u64 cookie)
{
	struct sf_flow_state *st = conn_slot(cookie);

	return st && st->cookie == cookie ? st : NULL;
}

/* Starts tracking a connection: its close will be reported. */
static __always_inline void track_conn(struct bpf_sock_ops *skops, __u64 cookie, __u8 role, __u64 listener,
				       __u64 now, struct task_struct *owner)
{
	struct sf_flow_state *st = conn_slot(cookie);

	if (st)
		keep_state(st, cookie, role, listener, now, owner);
	track_state(skops);
}

static __always_inline struct sf_flow_state *lslot(__u64 cookie)
{
	__u32 slot = cookie & (SF_LSLOTS - 1);

	return bpf_map_lookup_elem(&lslots, &slot);
}

/* Starts tracking a listener, with the current task as its owner. False if the
 * tables had no room: its close will not be seen. */
static __always_inline bool track_listener(struct bpf_sock_ops *skops, __u64 cookie, __u64 now,
					   struct task_struct *task)
{
	struct sf_flow_state *slot = lslot(cookie), st = {};

	if (slot && __sync_val_compare_and_swap(&slot->cookie, 0, cookie) == 0) {
		keep_state(slot, cookie, SF_ROLE_LISTENER, 0, now, task);
	} else {
		keep_state(&st, cookie, SF_ROLE_LISTENER, 0, now, task);
		if (bpf_map_update_elem(&listening, &cookie, &st, BPF_ANY)) {
			__sync_fetch_and_add(&untracked_sockets, 1);
			return false;
		}
	}
	track_state(skops);
	return true;
}

/* A tracked listener's state, or NULL. */
static __always_inline struct sf_flow_state *listener_state(__u64 cookie)
{
	struct sf_flow_state *slot = lslot(cookie);

	if (slot && slot->cookie == cookie)
		return slot;
	return bpf_map_lookup_elem(&listening, &cookie);
}

/* A listener closed: its slot or hash entry is free again. */
static __always_inline void untrack_listener(__u64 cookie)
{
	struct sf_flow_state *slot = lslot(cookie);

	if (slot && slot->cookie == cookie)
		__sync_lock_test_and_set(&slot->cookie, 0);
	else
		bpf_map_delete_elem(&listening, &cookie);
}

static __always_inline void listener_key(struct sf_listener_key *k, const struct sf_sock *s)
{
	__builtin_memcpy(k->addr, s->laddr, 16);
	k->netns = s->netns;
	k->port = s->lport;
	k->family = s->family;
}

static __always_inline bool same_key(const struct sf_listener_key *a, const struct sf_listener_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];
}

static __always_inline struct sf_lset *lindex_set(const struct sf_listener_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 i = (w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4] ^ w[5]) * 0x9E3779B1u;

	_Static_assert(SF_LSETS == 1 << 12, "the set is the product's top 12 bits");
	i = i >> 20;
	return bpf_map_lookup_elem(&lindex, &i);
}

/* The way of x that holds k, or -1. */
static __always_inline int lindex_way(const struct sf_lset *x, const struct sf_listener_key *k)
{
#pragma unroll
	for (int w = 0; w < SF_LWAYS; w++)
		if (*(volatile const __u32 *)&x->n[w] && same_key(&x->way[w].key, k))
			return w;
	return -1;
}

/* The listener `k` names: 1 and its cookie in *cookie (0 when several share the
 * key), 0 if no listener has the key, -1 if only the hash can say. */
static __always_inline int lindex_find(const struct sf_listener_key *k, __u64 *cookie)
{
	struct sf_lset *x = lindex_set(k);
	__u32 seq, spilled;
	__u64 c = 0;
	int w;

	if (!x)
		return -1;
	seq = *(volatile __u32 *)&x->seq;
	barrier();
	w = lindex_way(x, k);
	if (w >= 0 && w < SF_LWAYS)
		c = x->way[w].cookie;
	spilled = *(volatile __u32 *)&x->spilled;
	barrier();
	/* x86 keeps loads in order: a writer that changed the set meanwhile
	 * changed seq too (on other architectures, the hash) */
	if (!SF_LOADS_ORDERED || (seq & 1) || *(volatile __u32 *)&x->seq != seq)
		return -1;
	if (w >= 0) {
		*cookie = c;
		return 1;
	}
	return spilled ? -1 : 0;
}

/* k's set, locked, its sequence number odd: the writer changes it now. */
static __always_inline struct sf_lset *lindex_write(const struct sf_listener_key *k)
{
	struct sf_lset *x = lindex_set(k);

	if (!x)
		return NULL;
	bpf_spin_lock(&x->lock);
	x->seq++;
	barrier();
	return x;
}

static __always_inline void lindex_written(struct sf_lset *x)
{
	barrier();
	x->seq++;
	bpf_spin_unlock(&x->lock);
}

/* A listener registers its key. A listener whose close will not be seen
 * (untracked) holds its way, or its set's spill count, for good. True if the
 * key goes to the hash. */
static __always_inline bool lindex_add(const struct sf_listener_key *k, __u64 cookie, bool tracked)
{
	struct sf_lset *x = lindex_write(k);
	int w;

	if (!x)
		return true;
	w = lindex_way(x, k);
	if (w >= 0 && w < SF_LWAYS) {
		if (!tracked)
			x->n[w] = SF_LINDEX_FOREVER;
		else if (x->n[w] != SF_LINDEX_FOREVER)
			x->n[w]++;
		if (x->way[w].cookie != cookie)
			x->way[w].cookie = 0; /* a second listener on the key */
		lindex_written(x);
		return false;
	}
	if (tracked && !x->spilled) {
#pragma unroll
		for (int w = 0; w < SF_LWAYS; w++) {
			if (!x->n[w]) {
				__builtin_memcpy(&x->way[w].key, k, sizeof(*k));
				x->way[w].cookie = cookie;
				x->n[w] = 1;
				lindex_written(x);
				return false;
			}
		}
	}
	if (!tracked)
		x->spilled = SF_LINDEX_FOREVER;
	else if (x->spilled != SF_LINDEX_FOREVER)
		x->spilled++;
	lindex_written(x);
	return true;
}

/* A tracked listener closes. True if its key is in the hash. */
static __always_inline bool lindex_remove(const struct sf_listener_key *k)
{
	struct sf_lset *x = lindex_write(k);
	int w;

	if (!x)
		return true;
	w = lindex_way(x, k);
	if (w >= 0 && w < SF_LWAYS) {
		if (x->n[w] != SF_LINDEX_FOREVER)
			x->n[w]--;
		lindex_written(x);
		return false;
	}
	if (x->spilled && x->spilled != SF_LINDEX_FOREVER)
		x->spilled--;
	lindex_written(x);
	return true;
}

static __always_inline void register_listener(struct bpf_sock *sk, struct sock *full, const struct sf_sock *s,
					      bool tracked)
{
	struct sf_listener_key k = {};
	struct sf_listener v = { .cookie = s->cookie, .count = 1 }, *old;

	listener_key(&k, s);
	if (lindex_add(&k, s->cookie, tracked) && bpf_map_update_elem(&listeners, &k, &v, BPF_NOEXIST)) {
		old = bpf_map_lookup_elem(&listeners, &k);
		if (old) {
			__sync_fetch_and_add(&old->count, 1);
			if (old->cookie != s->cookie)
				old->cookie = 0; /* a second listener on the key */
		}
	}
	if (BPF_CORE_READ_BITFIELD(&full->__sk_common, skc_reuseport)) {
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
	if (!lindex_remove(&k))
		return;
	v = bpf_map_lookup_elem(&listeners, &k);
	if (v && __sync_fetch_and_sub(&v->count, 1) == 1)
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
static __always_inline __u64 find_listener(struct bpf_sock *sk, struct sock *full, const struct sf_sock *s)
{
	struct sf_listener_key k = {};
	struct sf_listener *v;
	__u64 cookie = 0;
	int found;

	/* only a child of a SO_REUSEPORT listener has socket storage: ask the map then */
	if (full->sk_bpf_storage) {
		__u64 *parent = bpf_sk_storage_get(&reuseport_parents, sk, 0, 0);

		if (parent)
			return *parent;
	}
	listener_key(&k, s);
	found = lindex_find(&k, &cookie);
	if (found > 0)
		return cookie;
	if (found < 0) {
		v = bpf_map_lookup_elem(&listeners, &k);
		if (v)
			return v->cookie;
	}
	__builtin_memset(k.addr, 0, 16);
	found = lindex_find(&k, &cookie);
	if (found >= 0)
		return found ? cookie : 0;
	v = bpf_map_lookup_elem(&listeners, &k);
	return v ? v->cookie : 0;
}

static __always_inline int on_listen(struct bpf_sock_ops *skops, struct bpf_sock *bsk, struct sock *sk)
{
	struct task_struct *task;
	struct sf_sock s = {};
	struct sf_stage *stg;
	struct sf_event *e;
	__u64 cookie, now;
	bool tracked;

	if (!port_selected(skops->local_port, 0))
		return 1;
	cookie = skops_cookie(skops, sk);
	now = sf_clock();
	task = bpf_get_current_task_btf();
	tracked = track_listener(skops, cookie, now, task);
	fill_sock(&s, sk);
	s.cookie = cookie;
	register_listener(bsk, sk, &s, tracked); /* even when the record finds no room */
	e = stage_reserve(SF_KIND_LISTEN, now, &stg);
	if (!e)
		return 1;
	e->sock = s;
	fill_task(&e->task, task);
	e->start_ns = now;
	e->role = SF_ROLE_LISTENER;
	e->backlog = sk->sk_max_ack_backlog;
	stage_submit(e, stg, new_instance(e));
	return 1;
}

static __always_inline int on_connect(struct bpf_sock_ops *skops, struct sock *sk)
{
	struct task_struct *task;
	struct sf_stage *s;
	struct sf_event *e;
	__u64 cookie, now;

	if (!port_selected(skops->local_port, bpf_ntohl(skops->remote_port)))
		return 1;
	cookie = skops_cookie(skops, sk);
	now = sf_clock();
	task = bpf_get_current_task_btf();
	track_conn(skops, cookie, SF_ROLE_OUTBOUND, 0, now, task);
	e = stage_reserve(SF_KIND_CONNECT, now, &s);
	if (!e)
		return 1;
	fill_sock(&e->sock, sk);
	e->sock.cookie = cookie;
	fill_task(&e->task, task);
	e->start_ns = now;
	e->role = SF_ROLE_OUTBOUND;
	stage_submit(e, s, new_instance(e));
	return 1;
}

/* From tcp_finish_connect(), on the SYN-ACK's receive path. */
static __always_inline int on_active_established(struct bpf_sock_ops *skops, struct tcp_sock *tp, struct sock *sk)
{
	struct sf_flow_state *st;
	struct sf_stage *s;
	struct sf_event *e;
	__u64 cookie;

	if (!tracked(skops))
		return 1; /* connect() was not seen: before sockflow started, or filtered */
	cookie = skops_cookie(skops, sk);
	e = stage_reserve(SF_KIND_ESTABLISHED, tcp_time(tp), &s);
	if (!e)
		return 1;
	fill_sock(&e->sock, sk);
	e->sock.cookie = cookie;
	e->role = SF_ROLE_OUTBOUND;
	st = conn_state(cookie);
	if (st) {
		e->start_ns = st->start_ns;
		keep_owner(&e->task, st);
	}
	stage_submit(e, s, false);
	return 1;
}

/* Runs in softirq: the current task is whoever the packet interrupted. The
 * handshake's last ACK is on the child's receive path, except for a Fast Open
 * child, which gets here from its listener's SYN, before anything set the
 * child's TCP clock. */
static __always_inline int on_passive_established(struct bpf_sock_ops *skops, struct bpf_sock *bsk,
						  struct tcp_sock *tp, struct sock *sk)
{
	struct sf_stage *stg;
	struct sf_event *e;
	struct sf_sock s = {};
	__u64 cookie, listener, now;

	if (!port_selected(skops->local_port, bpf_ntohl(skops->remote_port)))
		return 1;
	cookie = skops_cookie(skops, sk);
	now = tp->fastopen_rsk ? sf_clock() : tcp_time(tp);
	fill_sock(&s, sk);
	s.cookie = cookie;
	listener = find_listener(bsk, sk, &s);
	track_conn(skops, cookie, SF_ROLE_INBOUND, listener, now, NULL);
	e = stage_reserve(SF_KIND_ESTABLISHED, now, &stg);
	if (!e)
		return 1;
	e->sock = s;
	e->start_ns = now;
	e->listener_cookie = listener;
	e->role = SF_ROLE_INBOUND;
	stage_submit(e, stg, false);
	return 1;
}

/* STATE_CB runs at the top of tcp_set_state(), before the socket is unhashed:
 * endpoints, counters and sk_err are still those of the flow. Only sockets we set
 * the flag on (or children of our listeners, which inherit it) get here. */
static __always_inline int on_close(struct bpf_sock_ops *skops, struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct sf_flow_state *st;
	struct sf_stage *stg;
	struct sf_event *e;
	__u8 old = skops->args[0];
	__u64 cookie, now;

	cookie = skops_cookie(skops, sk);
	if (old == TCP_LISTEN) {
		struct sf_sock s = {};

		st = listener_state(cookie);
		if (!st)
			return 1;
		fill_sock(&s, sk);
		s.cookie = cookie;
		unregister_listener(&s); /* even when the record below finds no room */
	} else {
		st = conn_state(cookie);
		/* A child our listener's flag was copied to, which died before its
		 * handshake completed (accept queue full, out of memory): not a flow. */
		if (!st && old == TCP_SYN_RECV)
			return 1;
	}
	/* These states end on the receive path (the peer's last FIN or ACK) or in a
	 * timer, unless a process holds the socket's lock: close() in FIN_WAIT2, or
	 * a socket destroyed (SOCK_DESTROY). Other closes can come from anywhere: a
	 * listener's close() takes its unaccepted children with it. */
	if ((old == TCP_FIN_WAIT2 || old == TCP_CLOSING || old == TCP_LAST_ACK) && !sk->sk_lock.owned)
		now = tcp_time(tp);
	else
		now = sf_clock();
	e = stage_reserve(SF_KIND_CLOSE, now, &stg);
	if (e) {
		fill_sock(&e->sock, sk);
		e->sock.cookie = cookie;
		if (st) {
			e->start_ns = st->start_ns;
			e->listener_cookie = st->listener_cookie;
			e->role = st->role;
			keep_owner(&e->task, st);
		}
		e->tcp_state = old;
		e->bytes_received = tp->bytes_received;
		e->bytes_acked = tp->bytes_acked;
		e->sk_err = sk->sk_err;
		/* sk_shutdown cannot tell a received FIN from our own close(); SOCK_DONE can. */
		if (sk->__sk_common.skc_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
			e->close_flags |= SF_CLOSE_FIN_RCVD;
		/* Our FIN went out in these states; it is acked once snd_una reaches write_seq. */
		if ((old == TCP_FIN_WAIT2 || old == TCP_CLOSING || old == TCP_LAST_ACK) &&
		    tp->snd_una == tp->write_seq)
			e->close_flags |= SF_CLOSE_FIN_ACKED;
		stage_submit(e, stg, false);
	}
	/* a socket that listens again starts a new flow */
	if (old == TCP_LISTEN)
		untrack_listener(cookie);
	else if (st)
		st->cookie = 0;
	return 1;
}

#define SF_SOCKOPS_HANDLED                                                                 \
	(1U << BPF_SOCK_OPS_TCP_LISTEN_CB | 1U << BPF_SOCK_OPS_TCP_CONNECT_CB |              \
	 1U << BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | 1U << BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB | \
	 1U << BPF_SOCK_OPS_STATE_CB)

SEC("sockops")
int handle_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	struct bpf_sock *bsk;
	struct tcp_sock *tp;
	struct sock *sk;

	/* most calls are ops we do not handle (RTO and window init, ECN, state
	 * changes short of CLOSE): out before anything else is read */
	if (op >= 32 || !((1U << op) & SF_SOCKOPS_HANDLED) ||
	    (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] != TCP_CLOSE))
		return 1;
	bsk = skops->sk;
	tp = skops_tcp(skops);
	if (!tp || !bsk)
		return 1;
	sk = &tp->inet_conn.icsk_inet.sk;
	switch (op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		return on_listen(skops, bsk, sk);
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		return on_connect(skops, sk);
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		return on_active_established(skops, tp, sk);
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		return on_passive_established(skops, bsk, tp, sk);
	case BPF_SOCK_OPS_STATE_CB:
		return on_close(skops, tp);
	}
	return 1;
}

/* fd -> file -> socket -> sock of the current task. */
static __always_inline struct sock *fd_sock(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file **fds = fdt->fd;
	struct file *f;
	struct socket *so;

	if (fd >= fdt->max_fds)
		return NULL;
	if (SF_HAVE_VOID_CAST)
		f = ((struct file *const *)bpf_rdonly_cast(fds, 0))[fd];
	else if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]))
		return NULL;
	if (!f)
		return NULL;
	f = bpf_rdonly_cast(f, bpf_core_type_id_kernel(struct file));
	so = bpf_rdonly_cast(f->private_data, bpf_core_type_id_kernel(struct socket));
	if (!so)
		return NULL;
	return so->sk;
}

static __always_inline int on_accept(long fd)
{
	struct task_struct *task;
	struct sock_common *skc;
	struct sf_stage *s;
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
	skc = &sk->__sk_common;
	family = skc->skc_family;
	if ((family != AF_INET && family != AF_INET6) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	lport = skc->skc_num;
	rport = bpf_ntohs(skc->skc_dport);
	if (!port_selected(lport, rport))
		return 0;

	e = stage_reserve(SF_KIND_ACCEPT, sf_clock(), &s);
	if (!e)
		return 0;
	e->sock.cookie = skc->skc_cookie.counter;
	fill_sock(&e->sock, sk);
	e->tcp_state = skc->skc_state;
	e->fd = fd;
	e->role = SF_ROLE_INBOUND;
	fill_task(&e->task, task);
	stage_submit(e, s, new_instance(e));
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

/* ---- Enforcement: the policy, compiled by user space, decided at cgroup hooks ----
 *
 * Two generations of rules: a reload writes the idle one, then flips
 * policy_generation with one store, so every decision sees one whole policy.
 * Programs read the generation once per decision. */

__u32 policy_generation = 0;
__u32 policy_default[SF_GENERATIONS] = {};    /* enum sf_action */
__u32 policy_needs[SF_GENERATIONS] = {};      /* SF_PROC_* fields some rule asks about */
__u32 policy_cgroup_depth[SF_GENERATIONS] = {}; /* deepest cgroup level a rule names */

#define SF_MAX_CGROUP_DEPTH 16

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_MAX_RULES * SF_GENERATIONS);
	__type(key, __u32);
	__type(value, struct sf_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_HOOK_COUNT * SF_GENERATIONS);
	__type(key, __u32);
	__type(value, struct sf_hook_rules);
} hook_rules SEC(".maps");

/* What a decision is about: the call or packet, normalized, and the process. */
struct sf_decision {
	__u8 local[16];
	__u8 remote[16];
	__u64 exe_ino;
	__u64 cgroup[SF_MAX_CGROUP_DEPTH]; /* ancestor ids by level */
	char comm[SF_COMM_LEN];
	__u32 exe_dev;
	__u32 uid;
	__u32 gid;
	__u32 gen;
	__u32 hook_key;
	__u32 rule;     /* out: the matching rule's index */
	__u16 lport;
	__u16 rport;
	__u16 family;   /* AF_INET (IPv4 and IPv4-mapped) or AF_INET6 */
	__u8 protocol;
	__u8 has_local_addr;
	__u8 has_remote;
	__u8 action;    /* out */
	__u8 have_process;
	__u8 pad;
};

/* The decision's memory lives in a per-CPU map, not on the stack (512 bytes). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sf_decision);
} decisions SEC(".maps");

static __always_inline bool ports_match(const struct sf_endpoint_match *m, __u16 port)
{
	for (int j = 0; j < SF_RULE_PORTS; j++) {
		if (j >= m->nports)
			break;
		if (port >= m->ports[j].lo && port <= m->ports[j].hi)
			return true;
	}
	return false;
}

static __always_inline bool cidrs_match(const struct sf_endpoint_match *m, const __u8 *addr, __u16 family)
{
	const __u32 *a = (const __u32 *)addr;

	for (int j = 0; j < SF_RULE_CIDRS; j++) {
		const __u32 *net, *mask;

		if (j >= m->ncidrs)
			break;
		if (m->cidrs[j].family != family)
			continue;
		net = (const __u32 *)m->cidrs[j].net;
		mask = (const __u32 *)m->cidrs[j].mask;
		if ((a[0] & mask[0]) != net[0])
			continue;
		if (family == AF_INET)
			return true;
		if ((a[1] & mask[1]) == net[1] && (a[2] & mask[2]) == net[2] && (a[3] & mask[3]) == net[3])
			return true;
	}
	return false;
}

/* Whether v is one of the first n of a rule's uids or gids. */
static __always_inline bool id_in(const __u32 *ids, __u8 n, __u32 v)
{
	for (int j = 0; j < SF_RULE_IDS; j++) {
		if (j >= n)
			break;
		if (ids[j] == v)
			return true;
	}
	return false;
}

static __always_inline bool process_match(const struct sf_process_match *m, const struct sf_decision *d)
{
	if (m->fields & SF_PROC_EXE) {
		bool hit = false;

		for (int j = 0; j < SF_RULE_EXES; j++) {
			if (j >= m->nexe)
				break;
			if (m->exe[j].ino == d->exe_ino && m->exe[j].dev == d->exe_dev) {
				hit = true;
				break;
			}
		}
		if (!hit)
			return false;
	}
	if (m->fields & SF_PROC_COMM) {
		bool hit = false;
		__u64 c0 = *(const __u64 *)&d->comm[0], c1 = *(const __u64 *)&d->comm[8];

		for (int j = 0; j < SF_RULE_COMMS; j++) {
			if (j >= m->ncomm)
				break;
			if (*(const __u64 *)&m->comm[j][0] == c0 && *(const __u64 *)&m->comm[j][8] == c1) {
				hit = true;
				break;
			}
		}
		if (!hit)
			return false;
	}
	if ((m->fields & SF_PROC_UID) && !id_in(m->uid, m->nuid, d->uid))
		return false;
	if ((m->fields & SF_PROC_GID) && !id_in(m->gid, m->ngid, d->gid))
		return false;
	if (m->fields & SF_PROC_CGROUP) {
		bool hit = false;

		for (int j = 0; j < SF_RULE_CGROUPS; j++) {
			__u32 level;

			if (j >= m->ncgroup)
				break;
			level = m->cgroup[j].level;
			if (level < SF_MAX_CGROUP_DEPTH && d->cgroup[level] == m->cgroup[j].id) {
				hit = true;
				break;
			}
		}
		if (!hit)
			return false;
	}
	return true;
}

/* One rule of the hook's list, in order; returning 1 stops the loop. The decision
 * is the per-CPU one the program began (bpf_loop's context must be on the stack,
 * and the program cannot migrate while it runs). */
static long check_rule(__u32 i, void *unused)
{
	__u32 zero = 0;
	struct sf_decision *d = bpf_map_lookup_elem(&decisions, &zero);
	struct sf_hook_rules *list;
	struct sf_rule *r;
	__u32 key;

	if (!d)
		return 1;
	list = bpf_map_lookup_elem(&hook_rules, &d->hook_key);
	if (!list || i >= list->count)
		return 1;
	key = (d->gen & (SF_GENERATIONS - 1)) * SF_MAX_RULES + list->index[i & (SF_MAX_RULES - 1)];
	r = bpf_map_lookup_elem(&rules, &key);
	if (!r)
		return 0;
	if (r->protocol && r->protocol != d->protocol)
		return 0;
	if (r->family && r->family != d->family)
		return 0;
	if ((r->match & SF_MATCH_LOCAL_PORTS) && !ports_match(&r->local, d->lport))
		return 0;
	if ((r->match & SF_MATCH_LOCAL_CIDRS) && (!d->has_local_addr || !cidrs_match(&r->local, d->local, d->family)))
		return 0;
	if ((r->match & SF_MATCH_REMOTE_PORTS) && (!d->has_remote || !ports_match(&r->remote, d->rport)))
		return 0;
	if ((r->match & SF_MATCH_REMOTE_CIDRS) && (!d->has_remote || !cidrs_match(&r->remote, d->remote, d->family)))
		return 0;
	if ((r->match & SF_MATCH_PROCESS) && !process_match(&r->process, d))
		return 0;
	if ((r->match & SF_MATCH_NOT_PROCESS) && process_match(&r->not_process, d))
		return 0;
	d->action = r->action;
	d->rule = list->index[i & (SF_MAX_RULES - 1)];
	return 1;
}

/* A fresh decision for `hook`, or NULL when the active policy has no rule for it
 * (then the default applies and nothing else needs computing). */
static __always_inline struct sf_decision *begin(__u32 hook_index, __u8 *default_action)
{
	__u32 zero = 0, gen = policy_generation & (SF_GENERATIONS - 1);
	struct sf_decision *d = bpf_map_lookup_elem(&decisions, &zero);
	struct sf_hook_rules *list;
	__u32 key = gen * SF_HOOK_COUNT + hook_index;

	*default_action = policy_default[gen];
	list = bpf_map_lookup_elem(&hook_rules, &key);
	if (!d || !list || !list->count)
		return NULL;
	__builtin_memset(d, 0, sizeof(*d));
	d->gen = gen;
	d->hook_key = key;
	d->action = *default_action;
	d->rule = ~0U;
	return d;
}

/* The current task's facts, when the active policy asks about them. */
static __always_inline void current_process(struct sf_decision *d)
{
	__u32 needs = policy_needs[d->gen & (SF_GENERATIONS - 1)];
	struct task_struct *task;
	__u64 ugid;

	d->have_process = 1;
	if (needs & SF_PROC_EXE) {
		struct mm_struct *mm;

		task = bpf_get_current_task_btf();
		mm = task->mm;
		if (mm && mm->exe_file) {
			d->exe_ino = mm->exe_file->f_inode->i_ino;
			d->exe_dev = mm->exe_file->f_inode->i_sb->s_dev;
		}
	}
	if (needs & SF_PROC_COMM)
		bpf_get_current_comm(d->comm, sizeof(d->comm));
	if (needs & (SF_PROC_UID | SF_PROC_GID)) {
		ugid = bpf_get_current_uid_gid();
		d->uid = (__u32)ugid;
		d->gid = ugid >> 32;
	}
	if (needs & SF_PROC_CGROUP) {
		__u32 depth = policy_cgroup_depth[d->gen & (SF_GENERATIONS - 1)];

		for (int l = 0; l < SF_MAX_CGROUP_DEPTH; l++) {
			if (l > depth)
				break;
			d->cgroup[l] = bpf_get_current_ancestor_cgroup_id(l);
		}
	}
}

static __always_inline void decide(struct sf_decision *d)
{
	int unused = 0;

	bpf_loop(SF_MAX_RULES, check_rule, &unused, 0);
}

/* IPv4-mapped IPv6 addresses are IPv4 to the policy. */
static __always_inline __u16 normalize(__u8 *addr, __u16 family)
{
	__u32 *w = (__u32 *)addr;

	if (family == AF_INET6 && w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) {
		w[0] = w[3];
		w[1] = w[2] = w[3] = 0;
		return AF_INET;
	}
	return family;
}

/* A deny or log record. In process context with the current task. */
static __always_inline void report(const struct sf_decision *d, __u32 hook, __u16 sock_family, __u64 cookie,
				   bool task)
{
	struct sf_event *e = reserve(SF_KIND_VERDICT);

	if (!e)
		return;
	e->sock.cookie = cookie;
	e->sock.family = sock_family;
	e->sock.protocol = d->protocol;
	if (d->family == AF_INET && sock_family == AF_INET6) {
		/* back to the mapped form the socket uses; user space reports IPv4, mapped */
		__u32 *l = (__u32 *)e->sock.laddr, *r = (__u32 *)e->sock.raddr;

		l[2] = r[2] = bpf_htonl(0xffff);
		l[3] = *(const __u32 *)d->local;
		r[3] = *(const __u32 *)d->remote;
	} else {
		__builtin_memcpy(e->sock.laddr, d->local, 16);
		__builtin_memcpy(e->sock.raddr, d->remote, 16);
	}
	e->sock.lport = d->lport;
	e->sock.rport = d->has_remote ? d->rport : 0;
	e->hook = hook;
	e->action = d->action;
	e->rule = d->rule;
	e->generation = d->gen;
	if (task) {
		struct task_struct *t = bpf_get_current_task_btf();

		e->sock.netns = t->nsproxy->net_ns->ns.inum;
		fill_task(&e->task, t);
		submit_with_task(e);
	} else {
		submit(e);
	}
}

/* Decides a call in process context: returns 1 to allow it, 0 to deny it. */
static __always_inline int verdict_for_call(struct sf_decision *d, __u32 hook, __u16 sock_family, __u64 cookie)
{
	current_process(d);
	decide(d);
	if (d->action == SF_ACTION_ALLOW)
		return 1;
	report(d, hook, sock_family, cookie, true);
	return d->action == SF_ACTION_DENY ? 0 : 1;
}

/* `family` is a constant per program: a connect4 program may not even name
 * user_ip6 (the verifier checks context fields per attach type). */
static __always_inline int enforce_sock_addr(struct bpf_sock_addr *ctx, __u32 hook, const __u16 family)
{
	struct bpf_sock *sk = ctx->sk;
	struct sf_decision *d;
	__u8 dflt;

	d = begin(__builtin_ctz(hook), &dflt);
	if (!d)
		return dflt != SF_ACTION_DENY;
	d->protocol = ctx->protocol;
	d->rport = bpf_ntohs(ctx->user_port);
	d->has_remote = 1;
	if (family == AF_INET) {
		*(__u32 *)d->remote = ctx->user_ip4;
		if (sk)
			*(__u32 *)d->local = sk->src_ip4;
	} else {
		__u32 *r = (__u32 *)d->remote;

		r[0] = ctx_u32(&ctx->user_ip6[0]);
		r[1] = ctx_u32(&ctx->user_ip6[1]);
		r[2] = ctx_u32(&ctx->user_ip6[2]);
		r[3] = ctx_u32(&ctx->user_ip6[3]);
		if (sk) {
			__u32 *l = (__u32 *)d->local;

			l[0] = ctx_u32(&sk->src_ip6[0]);
			l[1] = ctx_u32(&sk->src_ip6[1]);
			l[2] = ctx_u32(&sk->src_ip6[2]);
			l[3] = ctx_u32(&sk->src_ip6[3]);
		}
		normalize(d->local, AF_INET6);
	}
	if (sk) {
		d->lport = sk->src_port;
		d->has_local_addr = 1;
	}
	d->family = normalize(d->remote, family);
	return verdict_for_call(d, hook, family, bpf_get_socket_cookie(ctx));
}

SEC("cgroup/connect4")
int enforce_connect4(struct bpf_sock_addr *ctx)
{
	return enforce_sock_addr(ctx, SF_HOOK_CONNECT, AF_INET);
}

SEC("cgroup/connect6")
int enforce_connect6(struct bpf_sock_addr *ctx)
{
	return enforce_sock_addr(ctx, SF_HOOK_CONNECT, AF_INET6);
}

SEC("cgroup/sendmsg4")
int enforce_sendmsg4(struct bpf_sock_addr *ctx)
{
	return enforce_sock_addr(ctx, SF_HOOK_UDP_SEND, AF_INET);
}

SEC("cgroup/sendmsg6")
int enforce_sendmsg6(struct bpf_sock_addr *ctx)
{
	return enforce_sock_addr(ctx, SF_HOOK_UDP_SEND, AF_INET6);
}

/* listen rules are enforced at bind(): a denied process never holds the port. */
static __always_inline int enforce_bind(struct bpf_sock *sk, const __u16 family)
{
	struct sf_decision *d;
	__u8 dflt;

	if (sk->protocol != IPPROTO_TCP)
		return 1;
	d = begin(__builtin_ctz(SF_HOOK_LISTEN), &dflt);
	if (!d)
		return dflt != SF_ACTION_DENY;
	d->protocol = IPPROTO_TCP;
	d->lport = sk->src_port;
	d->has_local_addr = 1;
	if (family == AF_INET) {
		*(__u32 *)d->local = sk->src_ip4;
	} else {
		__u32 *l = (__u32 *)d->local;

		l[0] = ctx_u32(&sk->src_ip6[0]);
		l[1] = ctx_u32(&sk->src_ip6[1]);
		l[2] = ctx_u32(&sk->src_ip6[2]);
		l[3] = ctx_u32(&sk->src_ip6[3]);
	}
	d->family = normalize(d->local, family);
	return verdict_for_call(d, SF_HOOK_LISTEN, family, bpf_get_socket_cookie(sk));
}

SEC("cgroup/post_bind4")
int enforce_bind4(struct bpf_sock *sk)
{
	return enforce_bind(sk, AF_INET);
}

SEC("cgroup/post_bind6")
int enforce_bind6(struct bpf_sock *sk)
{
	return enforce_bind(sk, AF_INET6);
}

SEC("cgroup/sock_create")
int enforce_socket(struct bpf_sock *sk)
{
	struct sf_decision *d;
	__u8 dflt;
	__u16 family = sk->family;

	if (family != AF_INET && family != AF_INET6)
		return 1; /* the policy is about IP sockets */
	d = begin(__builtin_ctz(SF_HOOK_SOCKET), &dflt);
	if (!d)
		return dflt != SF_ACTION_DENY;
	d->protocol = sk->protocol;
	d->family = family;
	return verdict_for_call(d, SF_HOOK_SOCKET, family, bpf_get_socket_cookie(sk));
}

/* accept and udp-recv: a packet arriving for a socket of the cgroup, in softirq.
 * Only the socket's cgroup is known about the process. A SYN that is denied is
 * dropped: the peer sees no answer. */
SEC("cgroup_skb/ingress")
int enforce_ingress(struct __sk_buff *skb)
{
	struct sf_decision *d;
	__u8 dflt, proto, l4[14];
	__u32 l4off, hook;
	__u16 family;
	__u64 listener = 0;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 ip[20];

		if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
			return 1;
		proto = ip[9];
		l4off = (ip[0] & 0xf) * 4;
		family = AF_INET;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return 1;
		hook = proto == IPPROTO_TCP ? SF_HOOK_ACCEPT : SF_HOOK_UDP_RECV;
		d = begin(__builtin_ctz(hook), &dflt);
		if (!d)
			return dflt != SF_ACTION_DENY;
		__builtin_memcpy(d->remote, &ip[12], 4);
		__builtin_memcpy(d->local, &ip[16], 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 ip[40];

		if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
			return 1;
		proto = ip[6]; /* extension headers are not followed */
		l4off = 40;
		family = AF_INET6;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return 1;
		hook = proto == IPPROTO_TCP ? SF_HOOK_ACCEPT : SF_HOOK_UDP_RECV;
		d = begin(__builtin_ctz(hook), &dflt);
		if (!d)
			return dflt != SF_ACTION_DENY;
		__builtin_memcpy(d->remote, &ip[8], 16);
		__builtin_memcpy(d->local, &ip[24], 16);
	} else {
		return 1;
	}
	/* ports first: a UDP datagram may be shorter than a TCP header */
	if (bpf_skb_load_bytes(skb, l4off, l4, 4))
		return 1;
	/* TCP: only a SYN (no ACK) opens an inbound flow */
	if (proto == IPPROTO_TCP && (bpf_skb_load_bytes(skb, l4off + 13, &l4[13], 1) || (l4[13] & 0x12) != 0x02))
		return 1;
	d->protocol = proto;
	d->rport = (__u16)l4[0] << 8 | l4[1];
	d->lport = (__u16)l4[2] << 8 | l4[3];
	d->has_remote = 1;
	d->has_local_addr = 1;
	d->family = normalize(d->local, family);
	normalize(d->remote, family);
	if (policy_needs[d->gen & (SF_GENERATIONS - 1)] & SF_PROC_CGROUP) {
		__u32 depth = policy_cgroup_depth[d->gen & (SF_GENERATIONS - 1)];

		for (int l = 0; l < SF_MAX_CGROUP_DEPTH; l++) {
			if (l > depth)
				break;
			d->cgroup[l] = bpf_skb_ancestor_cgroup_id(skb, l);
		}
	}
	decide(d);
	if (d->action == SF_ACTION_ALLOW)
		return 1;
	if (proto == IPPROTO_TCP)
		listener = bpf_get_socket_cookie(skb);
	{
		struct sf_event *e = reserve(SF_KIND_VERDICT);

		if (e) {
			__builtin_memcpy(e->sock.laddr, d->local, 16);
			__builtin_memcpy(e->sock.raddr, d->remote, 16);
			e->sock.family = d->family;
			e->sock.protocol = proto;
			e->sock.lport = d->lport;
			e->sock.rport = d->rport;
			e->listener_cookie = listener;
			e->hook = hook;
			e->action = d->action;
			e->rule = d->rule;
			e->generation = d->gen;
			if (listener) {
				struct sf_flow_state *st = listener_state(listener);

				if (st)
					keep_owner(&e->task, st); /* the listener's owner */
			}
			submit(e);
		}
	}
	return d->action == SF_ACTION_DENY ? 0 : 1;
}

/* Run by the reader (BPF_PROG_TEST_RUN) at the start of each pass: every CPU's
 * stage to the ring. Returns how many stages were taken (a program was writing
 * into one): their records wait for the next pass. */
SEC("syscall")
int flush_stages(void *ctx)
{
	__u32 zero = 0, taken = 0;

	for (__u32 cpu = 0; cpu < 1024; cpu++) {
		struct sf_stage *s = bpf_map_lookup_percpu_elem(&stage, &zero, cpu);

		if (!s)
			break;
		if (__sync_lock_test_and_set(&s->busy, 1)) {
			taken++;
			continue;
		}
		stage_flush(s, s->n, BPF_RB_NO_WAKEUP);
		stage_release(s);
	}
	return taken;
}
