#!/usr/bin/env python3
"""Two sockflow builds at the fixed rate, side by side: what a change costs end to end.

    bench/ab.py OLD NEW [--rounds 12] [--seconds 2.5] [--rate 20000]

Each round runs the storm alone at a fixed rate (20k connections/s unless --rate
says otherwise), then with each build (the
order alternates from round to round), then alone again; each build's run is
compared with the mean of the two baselines, as in `make bench`'s fixed-rate step.
The last line is the per-round difference NEW - OLD: this VM drifts by more than
most changes between one run of `make bench` and the next, but far less between
two neighbouring runs of one round. Run it as root, with the storm built
(`make build/storm`) and both binaries release builds.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the storm, the monitors and their start/stop)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--rate", type=int, default=run.FIXED_RATE, help="connections/s")
    args = ap.parse_args()
    run.FIXED_RATE = args.rate
    builds = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    for path in builds.values():
        if not os.access(path, os.X_OK):
            sys.exit("bench/ab.py: %s: not an executable" % path)
    workdir = tempfile.mkdtemp(prefix="sockflow-ab-")
    per_cycle = lambda m: run.cpu_per_cycle(m["storm"]) * 1e6  # noqa: E731
    added = {"old": [], "new": []}
    try:
        for r in range(args.rounds):
            before = run.measure("conn1_fixed", None, args.seconds, workdir)
            runs = {}
            for name in (["old", "new"] if r % 2 == 0 else ["new", "old"]):
                runs[name] = run.measure("conn1_fixed", run.Sockflow(False, builds[name]), args.seconds, workdir)
            after = run.measure("conn1_fixed", None, args.seconds, workdir)
            base = (per_cycle(before) + per_cycle(after)) / 2
            for name in added:
                added[name].append(per_cycle(runs[name]) - base)
            print("  round %d: storm alone %.2f µs/cycle, old %+.2f, new %+.2f" %
                  (r + 1, base, added["old"][-1], added["new"][-1]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name in added:
        v = added[name]
        print("%s: %+.2f µs per connection, median [%+.2f – %+.2f]" % (name, statistics.median(v), min(v), max(v)))
    diff = [n - o for n, o in zip(added["new"], added["old"])]
    print("new - old per round: median %+.2f µs, mean %+.2f" % (statistics.median(diff), statistics.mean(diff)))


if __name__ == "__main__":
    main()
