#!/usr/bin/env python3
"""Two sockflow builds side by side by the time their BPF programs run per connection.

    bench/progtime.py OLD NEW [--pairs 4] [--rate 3600] [--seconds 5] [--mode conn|listen]

Each pair runs the storm at a fixed rate under each build (the order alternates
from pair to pair) with kernel.bpf_stats_enabled on, and prints, per build, the
run time the kernel counted for sockflow's storm-side programs (handle_*)
divided by the storm's cycles (connect-accept-close, or with --mode listen
socket-bind-listen-close), then NEW - OLD per pair. It sees
only the programs: not the dispatch around them, nor what a wakeup or a cache
line they evict costs afterwards (make bench and bench-profile see those), but
it varies by a few per cent where the end-to-end figure varies by tens. The
counting itself adds about 60 ns to every program run. Run as root with the
storm built (make build/storm); bpf_stats_enabled is put back as it was.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the storm and the sockflow monitor's start/stop)

SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def program_times():
    """run_time_ns and run_cnt of every loaded handle_* program, by id."""
    progs = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                                      check=True).stdout)
    return {p["id"]: (p.get("name", ""), p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in progs if p.get("name", "").startswith("handle_")}


def measure(binary, mode, rate, seconds, workdir):
    """ns of program time per connection cycle, in all and per program."""
    monitor = run.Sockflow(False, binary=binary)
    monitor.start(workdir)
    try:
        before = program_times()
        storm = run.parse_storm(subprocess.run(
            [run.STORM, "-m", mode, "-t", "1", "-r", str(rate), "-n", str(int(rate * seconds)),
             "-T", str(seconds + 5)], capture_output=True, text=True, check=True).stdout)
        after = program_times()
    finally:
        monitor.stop()
    per = {}
    for pid, (name, ns, _) in after.items():
        if pid in before:
            per[name] = per.get(name, 0) + (ns - before[pid][1]) / storm["cycles"]
    return sum(per.values()), per


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--rate", type=int, default=3600, help="connections/s (one the storm holds)")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mode", choices=["conn", "listen"], default="conn", help="the storm's cycle")
    args = ap.parse_args()
    builds = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    for path in builds.values():
        if not os.access(path, os.X_OK):
            sys.exit("bench/progtime.py: %s: not an executable" % path)
    with open(SYSCTL) as f:
        saved = f.read().strip()
    workdir = tempfile.mkdtemp(prefix="sockflow-progtime-")
    totals = {"old": [], "new": []}
    try:
        with open(SYSCTL, "w") as f:
            f.write("1")
        for p in range(args.pairs):
            per = {}
            for name in (["old", "new"] if p % 2 == 0 else ["new", "old"]):
                total, per[name] = measure(builds[name], args.mode, args.rate, args.seconds, workdir)
                totals[name].append(total)
            detail = ", ".join(f"{prog} {per['old'].get(prog, 0):.0f} → {per['new'].get(prog, 0):.0f}"
                               for prog in sorted(set(per["old"]) | set(per["new"])))
            print(f"  pair {p + 1}: old {totals['old'][-1]:.0f}, new {totals['new'][-1]:.0f} ns per cycle ({detail})",
                  flush=True)
    finally:
        with open(SYSCTL, "w") as f:
            f.write(saved)
        shutil.rmtree(workdir, ignore_errors=True)
    diff = [n - o for n, o in zip(totals["new"], totals["old"])]
    print(f"new - old per pair: median {statistics.median(diff):+.0f} ns per cycle "
          f"[{min(diff):+.0f} – {max(diff):+.0f}], lower in {sum(d < 0 for d in diff)} of {len(diff)}")


if __name__ == "__main__":
    main()
