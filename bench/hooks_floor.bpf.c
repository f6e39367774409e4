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
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("sockops")
int floor_sockops(struct bpf_sock_ops *skops)
{
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
