// SPDX-License-Identifier: (GPL-2.0 OR BSD-3-Clause)
/*
 * The floor under sockflow's kernel cost: the hooks sockflow must use on a
 * kernel without kprobes, fentry or BPF-LSM, with programs that do nothing.
 *
 *   sockops on the cgroup v2 root   the kernel calls it 9 times per connection
 *                                   cycle (RTO and window init, ECN, connect,
 *                                   established), whatever the program does
 *   syscalls:sys_exit_accept4/_accept  the only way to see who accepted a
 *                                   connection; enabling any syscall tracepoint
 *                                   puts every syscall of every task on the
 *                                   kernel's slow entry/exit path
 *
 * The benchmark runs the storm under these (bench/hooks_floor.c loads them)
 * next to the storm under sockflow: the difference is what sockflow's own work
 * costs, the rest is the price of the hooks.
 *
 * Two variants, for `bench/profile.py --what-if`, price a design choice alone:
 *   -DFLOOR_STATE_CB    sets BPF_SOCK_OPS_STATE_CB_FLAG at listen and connect, as
 *                       sockflow does to see CLOSE: every later state change of
 *                       those sockets (and of the listeners' children) calls the
 *                       program too
 *   -DFLOOR_DESTROY_TP  adds an empty program on the tcp_destroy_sock raw
 *                       tracepoint, the alternative way to see a socket go
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("sockops")
int floor_sockops(struct bpf_sock_ops *skops)
{
#ifdef FLOOR_STATE_CB
	if (skops->op == BPF_SOCK_OPS_TCP_LISTEN_CB || skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB)
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
#endif
	return 1;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int floor_accept4(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int floor_accept(void *ctx)
{
	return 0;
}

#ifdef FLOOR_DESTROY_TP
SEC("raw_tp/tcp_destroy_sock")
int floor_destroy(void *ctx)
{
	return 0;
}
#endif
