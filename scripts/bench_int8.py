#!/usr/bin/env python3
"""End-to-end int8 benchmark: perch int8 engine vs perch fp32 (the float model) vs ONNX Runtime on the same
QDQ model, same thread count, batch 1 and 64. Each configuration is run in interleaved rounds (int8, fp32,
ORT, int8, ...) so the three see the same machine load; the figure is the median over rounds of each run's
median latency. Each run warms up for at least 0.5 s first (perch bench's and bench.js's --warmup-ms default): the
CPU's clock ramps up over a fresh process's first ~0.3 s of work. Prints a Markdown table (and --json).

usage: scripts/bench_int8.py --perch build/release/perch --models DIR_WITH_FLOAT_MODELS --qdq DIR_WITH_Q_MODELS
                             [--threads 1] [--rounds 3] [--json] [--cpu] [--pin CPU]
The QDQ file for MODEL.onnx is QDQ_DIR/MODEL.q.onnx (perch quantize MODEL.onnx -o MODEL.q.onnx).

--cpu: instead of wall-clock medians, CPU time per inference from `perf stat -e task-clock` (the time the process
was on a CPU): each engine is run twice, with L and H timed iterations (batch 1: 200 and 2200, batch 64: 10 and
70), and (t(H) - t(L)) / (H - L) is the per-inference figure (start-up, model loading and warm-up cancel). On a machine shared with other jobs this is
what a run would take alone, up to cache interference; wall-clock medians there include time slices lost to other
processes, which hits long runs (batch 64) hardest.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_ms(cmd):
    r = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock"] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    for line in r.stderr.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[2].startswith("task-clock"):
            return float(f[0])
    sys.exit(f"no task-clock in perf output of {' '.join(cmd)}:\n{r.stderr}")


def per_iter_cpu(cmd_for_iters, lo, hi):
    return (cpu_ms(cmd_for_iters(hi)) - cpu_ms(cmd_for_iters(lo))) / (hi - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--perch", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--qdq", required=True)
    ap.add_argument("--names", default="fmnist_convnet,fmnist_convnet_hard,fmnist_mbv2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="CPU time per inference (perf stat task-clock)")
    ap.add_argument("--pin", default="", help="run every engine under `taskset -c PIN` (e.g. 1): on a VM whose "
                    "vCPUs differ in speed (one taking the host's interrupts or a noisy neighbour), the engines "
                    "then run on the same one")
    a = ap.parse_args()
    pre = ["taskset", "-c", a.pin] if a.pin else []
    rows = []
    for name in a.names.split(","):
        f32 = os.path.join(a.models, name + ".onnx")
        q = os.path.join(a.qdq, name + ".q.onnx")
        for batch in (1, 64):
            iters = "200" if batch == 1 else "30"
            t = {"int8": [], "fp32": [], "ort": []}
            for _ in range(a.rounds):
                if a.cpu:
                    lo, hi = (200, 2200) if batch == 1 else (10, 70)
                    # A fixed warm-up count (no time-based warm-up), so that t(H) - t(L) is H - L runs exactly.
                    base = ["--batch", str(batch), "--threads", str(a.threads), "--warmup", "3", "--warmup-ms", "0",
                            "--json", "--iters"]
                    ort = pre + ["node", os.path.join(ROOT, "tools", "ort", "bench.js"), q]
                    perch = pre + [a.perch, "bench"]
                    t["int8"].append(per_iter_cpu(lambda i: perch + [q, "--engine", "int8"] + base + [str(i)], lo, hi))
                    t["fp32"].append(
                        per_iter_cpu(lambda i: perch + [f32, "--engine", "fp32"] + base + [str(i)], lo, hi))
                    t["ort"].append(per_iter_cpu(lambda i: ort + base + [str(i)], lo, hi))
                    continue
                common = ["--batch", str(batch), "--threads", str(a.threads), "--iters", iters, "--json"]
                t["int8"].append(run_json(pre + [a.perch, "bench", q, "--engine", "int8"] + common)["median_ms"])
                t["fp32"].append(run_json(pre + [a.perch, "bench", f32, "--engine", "fp32"] + common)["median_ms"])
                ort = pre + ["node", os.path.join(ROOT, "tools", "ort", "bench.js"), q]
                t["ort"].append(run_json(ort + common)["median_ms"])
            m = {k: statistics.median(v) for k, v in t.items()}
            rows.append({"model": name, "batch": batch, "threads": a.threads, **{k + "_ms": v for k, v in m.items()},
                         "int8_vs_fp32": m["fp32"] / m["int8"], "int8_vs_ort": m["ort"] / m["int8"]})
    if a.json:
        print(json.dumps(rows))
        return
    print(f"| model | batch | perch int8 ms | perch fp32 ms | ORT (QDQ) ms | int8 speed-up vs fp32 | vs ORT |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['int8_ms']:.3f} | {r['fp32_ms']:.3f} | {r['ort_ms']:.3f} | "
              f"{r['int8_vs_fp32']:.2f}× | {r['int8_vs_ort']:.2f}× |")


if __name__ == "__main__":
    main()
