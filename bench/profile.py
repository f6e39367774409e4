#!/usr/bin/env python3
"""Where sockflow's kernel time goes, per connection, from system-wide profiles.

    bench/profile.py [--rounds 4] [--seconds 5] [--rate 20000] [--what-if] [--json FILE]

The fixed-rate step of `make bench` measures the storm's CPU per connection with
and without sockflow; on this VM its rounds vary by several µs, more than most
changes one would try. This step answers a narrower question much more steadily:
which kernel functions the storm's CPU time goes to. Each round profiles the
storm at a fixed rate alone, with sockflow's hooks and empty programs (the
floor), and with sockflow (`perf record -a`, cpu-clock at 10 kHz). Samples taken
in the storm's context are turned into ns per connection cycle, grouped into the
categories below, and each configuration is compared with the same round's
storm alone. The table shows the median with min and max over the rounds.

The BPF categories vary by up to about ten per cent between rounds. "everything
else" is the rest of the storm's time (TCP, allocation, scheduling) and varies
by a few µs: that column is the noise the end-to-end figure has to live with.
Sampling itself slows everything down, so the sum is larger than what `make
bench` measures without perf; use the categories to compare, not the total.
PROFILE_FREQ sets another sampling rate.

--what-if adds two variants of the floor that price one design choice each:
the floor with the STATE_CB flag sockflow sets to see a socket reach CLOSE
(every later state change then calls the sockops program), and the floor with
an empty program on the tcp_destroy_sock raw tracepoint, the other way to see
a socket go.
"""
import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the storm, the monitors and their start/stop)

FREQ = int(os.environ.get("PROFILE_FREQ", "10000"))

# (category, symbols as regular expressions) in the order the table shows them.
CATEGORIES = [
    ("syscall tracepoint: the slow path every syscall takes",
     [r"do_syscall_64", r"syscall_trace_enter", r"syscall_exit_work", r"perf_syscall_exit", r"x64_sys_call",
      r"perf_swevent_(get|put)_recursion_context", r"_find_first_bit"]),
    ("accept tracepoint: dispatch and program (task and exe name included)",
     [r"trace_call_bpf", r"__bpf_prog_(enter|exit)_recur", r"bpf_prog_\w+_(handle_accept4?_exit|floor_accept\w*)"]),
    ("sockops dispatch (tcp_call_bpf, the cgroup's program array)",
     [r"__cgroup_bpf_run_filter_sock_ops", r"tcp_set_state", r"bpf_prog_\w+_floor_sockops"]),
    ("sockops program (socket fields, task and exe name included: all inlined)", [r"bpf_prog_\w+_handle_sockops"]),
    ("ring buffer: reserve, submit, wakeups",
     [r"__bpf_ringbuf_reserve", r"bpf_ringbuf_(reserve|submit|query)", r"irq_work_queue", r"native_write_msr",
      r"native_apic_msr_write"]),
    ("clock reads", [r"read_tsc", r"ktime_get_(mono|boot)_fast_ns", r"bpf_ktime_get(_boot)?_ns"]),
    ("other helpers: cookie, map lookups, task, callback flags",
     [r"__sock_gen_cookie", r"bpf_get_socket_cookie\w*", r"lookup_nulls_elem_raw", r"__htab_map_lookup_elem",
      r"bpf_get_current_task_btf", r"bpf_sock_ops_cb_flags_set", r"bpf_sk_storage_get"]),
    ("raw tracepoint tcp_destroy_sock (--what-if): dispatch and program",
     [r"bpf_trace_run\d+", r"__bpf_trace_\w+", r"bpf_prog_\w+_floor_destroy"]),
]
OTHER = "everything else in the storm's context"
TOTAL = "total"
CONFIGS = [("alone", None), ("floor", bench.HooksFloor), ("sockflow", lambda: bench.Sockflow(False))]
WHAT_IF = [("floor + STATE_CB flag", lambda: bench.HooksFloor("hooks_floor_state_cb.bpf.o")),
           ("floor + destroy tracepoint", lambda: bench.HooksFloor("hooks_floor_destroy_tp.bpf.o"))]


def category(symbol):
    for name, patterns in CATEGORIES:
        if any(re.fullmatch(p, symbol) for p in patterns):
            return name
    return OTHER


def storm_profile(rate, seconds, data):
    """Runs the storm at `rate` and samples the whole machine for `seconds` in its
    middle; returns ns per cycle by category, from the storm's samples."""
    storm = subprocess.Popen([bench.STORM, "-m", "conn", "-t", "1", "-r", str(rate), "-n", "1000000000",
                              "-T", str(seconds + 1.5)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.75)
    subprocess.run(["perf", "record", "-q", "-a", "-F", str(FREQ), "-o", data, "--", "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, _ = storm.communicate(timeout=60)
    fields = bench.parse_storm(out)
    report = subprocess.run(["perf", "report", "-i", data, "--comm", "storm", "--no-children", "-n", "--sort", "sym",
                             "--stdio"], capture_output=True, text=True, check=True).stdout
    cycles = fields["rate"] * seconds  # cycles in the sampled window
    ns = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+\[.\]\s+(\S+)", line)
        if m:
            ns[category(m.group(2))] += int(m.group(1)) * 1e9 / FREQ / cycles
    ns[TOTAL] = sum(ns.values())
    return ns


def table(rounds, columns):
    """columns: (heading, configuration, baseline) triples."""
    names = [c[0] for c in CATEGORIES] + [OTHER, TOTAL]

    def cell(xs):
        return f"{statistics.median(xs):+.0f} [{min(xs):+.0f} – {max(xs):+.0f}]"

    out = ["| ns per connection cycle, storm's context | " + " | ".join(c[0] for c in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
    for n in names:
        cells = [cell([r[conf][n] - r[base][n] for r in rounds]) for _, conf, base in columns]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--what-if", action="store_true", help="also the floor with the STATE_CB flag, and with the "
                    "tcp_destroy_sock raw tracepoint")
    ap.add_argument("--json", default=os.path.join(bench.OUT, "profile.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-profile: needs root (it loads BPF programs and samples the kernel)")
    if subprocess.run(["perf", "--version"], capture_output=True).returncode != 0:
        sys.exit("bench-profile: perf is missing (Debian: linux-perf)")
    os.makedirs(bench.OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="sockflow-profile-", dir=bench.OUT)
    data = os.path.join(workdir, "perf.data")
    rounds = []
    try:
        for rnd in range(args.rounds):
            row = {}
            for name, make in CONFIGS + (WHAT_IF if args.what_if else []):
                monitor = make() if make else None
                if monitor:
                    monitor.start(workdir)
                try:
                    row[name] = storm_profile(args.rate, args.seconds, data)
                finally:
                    if monitor:
                        monitor.stop()
                print(f"  profile round {rnd + 1} {name}: {row[name][TOTAL]:.0f} ns/cycle", file=sys.stderr)
            rounds.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with open(args.json, "w") as f:
        json.dump(rounds, f, indent=1)
    uname = os.uname()
    print(f"\nWhere the storm's CPU goes at {args.rate:,} connections/s, {time.strftime('%Y-%m-%d')}, "
          f"{uname.release}, {os.cpu_count()} CPUs: {args.rounds} rounds of {args.seconds:g} s, "
          f"perf cpu-clock at {FREQ} Hz; median [min – max] of the paired differences\n")
    columns = [("floor − alone", "floor", "alone"), ("sockflow − alone", "sockflow", "alone"),
               ("sockflow − floor", "sockflow", "floor")]
    print(table(rounds, columns))
    if args.what_if:
        print("\nWhat one design choice costs, against the same round's floor:\n")
        print(table(rounds, [(name + " − floor", name, "floor") for name, _ in WHAT_IF]))
    print(f"\nraw rounds: {args.json}")


if __name__ == "__main__":
    main()
