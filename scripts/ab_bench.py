#!/usr/bin/env python3
"""A/B of two Google Benchmark binaries (e.g. bench_int8 before and after a change) on a shared machine.

usage: scripts/ab_bench.py OLD_BINARY NEW_BINARY FILTER ROUNDS [MIN_TIME]

Runs both binaries ROUNDS times, alternating which goes first, each pinned to CPU 1 with one thread
(PERCH_NUM_THREADS=1, OMP_NUM_THREADS=1), --benchmark_filter=FILTER --benchmark_min_time=MIN_TIME (default 0.1),
and prints per benchmark the minimum time of each binary over the rounds and old/new (> 1: the new one is faster).
Minima over alternated rounds, because other load on the machine only ever adds time.
"""
import collections
import os
import subprocess
import sys


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    old, new, flt, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    min_time = sys.argv[5] if len(sys.argv) > 5 else "0.1"
    env = dict(os.environ, OMP_NUM_THREADS="1", PERCH_NUM_THREADS="1")
    times = {"old": collections.defaultdict(list), "new": collections.defaultdict(list)}
    for r in range(rounds):
        order = (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))
        for tag, binary in order:
            p = subprocess.run(["taskset", "-c", "1", binary, f"--benchmark_filter={flt}",
                                f"--benchmark_min_time={min_time}", "--benchmark_format=csv"],
                               capture_output=True, text=True, env=env)
            if p.returncode != 0:
                sys.exit(f"{binary} failed:\n{p.stderr}")
            for line in p.stdout.splitlines():
                if line.startswith('"BM_'):
                    f = line.split(",")
                    times[tag][f[0].strip('"')].append(float(f[3]))  # real_time, in the benchmark's unit
    for name, olds in times["old"].items():
        news = times["new"].get(name)
        if not news:
            continue
        o, n = min(olds), min(news)
        print(f"{name:60s} old {o:10.1f} new {n:10.1f} old/new {o / n:5.2f}")


if __name__ == "__main__":
    main()
