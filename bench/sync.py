#!/usr/bin/env python3
"""Sync mode against async mode on the same lab, side by side (python3 stdlib only).

Starts `redoubt lab up` (production and two recovery servers on loopback, one disk), then
alternates the group between `mode = "async"` and `mode = "sync"` with `redoubt config apply`
for several rounds, and drives lv_data01's export with fio's nbd engine in each mode:

  a. 4 KiB random write, QD 1: mean completion latency
  b. 4 KiB random write + flush after each, QD 1: mean latency (what a database commit costs)
  c. 4 KiB random write, QD 16: IOPS
  d. 1 MiB sequential write, QD 8: MiB/s

It prints a markdown table of the medians over the rounds (and the p99 completion latency),
sync / async ratios, and the issue's goals: a <= 2x b(async), c >= 0.5x, d >= 0.8x.

  bash bench/sync.sh [--rounds N] [--seconds S] [--dir DIR]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
BINARY = os.path.join(REPO_ROOT, "target", "release", "redoubt")

# name, label, rw, block size, iodepth, fsync after each write, metric
WORKLOADS = [
    ("qd1", "a. 4 KiB write, QD 1, mean latency", "randwrite", "4k", 1, False, "lat"),
    ("qd1flush", "b. 4 KiB write + flush, QD 1, mean latency", "randwrite", "4k", 1, True, "lat"),
    ("qd16", "c. 4 KiB write, QD 16", "randwrite", "4k", 16, False, "iops"),
    ("seq", "d. 1 MiB write, QD 8", "write", "1M", 8, False, "bw"),
]


def log(message):
    print(f"[sync-bench] {message}", file=sys.stderr, flush=True)


def run(args, env=None, check=True):
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def lab_env(lab_dir):
    env = dict(os.environ)
    with open(os.path.join(lab_dir, "lab.env")) as handle:
        for line in handle:
            if "=" in line:
                key, value = line.strip().split("=", 1)
                env[key] = value
    return env


def set_mode(lab_dir, env, mode):
    config = run([BINARY, "config", "show"], env=env)
    changed = re.sub(r'(?m)^mode = "(async|sync)"', f'mode = "{mode}"', config)
    path = os.path.join(lab_dir, f"mode-{mode}.toml")
    with open(path, "w") as handle:
        handle.write(changed)
    if changed != config:
        run([BINARY, "config", "apply", path, "--yes"], env=env)
    # Every target connected and drained before measuring.
    run([BINARY, "status", "--wait-sync"], env=env)


def fio_json(args):
    # fio may print notes before its JSON document.
    text = run(args)
    start = text.find("{")
    if start < 0:
        sys.exit(f"fio printed no JSON:\n{text}")
    return json.loads(text[start:])["jobs"][0]


def export_uri(env):
    status = json.loads(run([BINARY, "status", "erp", "--format", "json"], env=env))
    for volume in status["groups"][0]["volumes"]:
        if volume["name"] == "lv_data01":
            return volume["export"]
    sys.exit("no export of lv_data01 in the status")


def fio(uri, workload, seconds):
    name, _, rw, bs, depth, _, _ = workload
    args = [
        "fio", "--output-format=json", f"--name={name}", "--ioengine=nbd", f"--uri={uri}",
        f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}", "--size=192M", "--time_based",
        f"--runtime={seconds}", "--randrepeat=0", "--norandommap",
    ]
    job = fio_json(args)["write"]
    p99 = job["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1e6
    return {"lat": job["lat_ns"]["mean"] / 1e6, "iops": job["iops"],
            "bw": job["bw_bytes"] / (1 << 20), "p99": p99}


def fio_commit(uri, workload, seconds):
    """Write + flush: the mean of (write latency + flush latency) per commit."""
    name, _, rw, bs, depth, _, _ = workload
    args = [
        "fio", "--output-format=json", f"--name={name}", "--ioengine=nbd", f"--uri={uri}",
        f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}", "--size=192M", "--time_based",
        f"--runtime={seconds}", "--randrepeat=0", "--norandommap", "--fsync=1",
    ]
    job = fio_json(args)
    write = job["write"]
    sync = job.get("sync", {})
    sync_mean_ns = sync.get("lat_ns", {}).get("mean", 0)
    commits = write["iops"]
    return {
        "lat": (write["lat_ns"]["mean"] + sync_mean_ns) / 1e6,
        "iops": commits,
        "bw": write["bw_bytes"] / (1 << 20),
        "p99": write["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--dir", default=None, help="lab directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    for tool in ("fio",):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: bash scripts/deps.sh")
    if not os.path.exists(BINARY):
        log("building target/release/redoubt")
        run(["cargo", "build", "--release", "--locked", "--quiet", "-p", "redoubt"])
    scratch = None
    lab_dir = args.dir
    if lab_dir is None:
        scratch = tempfile.mkdtemp(prefix="redoubt-sync-bench-", dir="/var/tmp")
        lab_dir = os.path.join(scratch, "lab")
    log(f"lab up in {lab_dir}")
    run([BINARY, "lab", "up", "--dir", lab_dir])
    results = {("async", w[0]): [] for w in WORKLOADS}
    results.update({("sync", w[0]): [] for w in WORKLOADS})
    try:
        env = lab_env(lab_dir)
        uri = export_uri(env)
        for round_index in range(args.rounds):
            # Interleave: the order of the modes alternates between rounds.
            modes = ("async", "sync") if round_index % 2 == 0 else ("sync", "async")
            for mode in modes:
                set_mode(lab_dir, env, mode)
                for workload in WORKLOADS:
                    measure = fio_commit if workload[5] else fio
                    result = measure(uri, workload, args.seconds)
                    results[(mode, workload[0])].append(result)
                    log(f"round {round_index + 1} {mode:5} {workload[0]:8} "
                        f"lat {result['lat']:.3f} ms  {result['iops']:.0f} IOPS  "
                        f"{result['bw']:.1f} MiB/s  p99 {result['p99']:.2f} ms")
    finally:
        run([BINARY, "lab", "down", "--dir", lab_dir, "--purge"], check=False)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    def median(mode, name, key):
        return statistics.median(r[key] for r in results[(mode, name)])

    out = []
    out.append(f"Sync vs async on the lab (medians of {args.rounds} interleaved rounds, "
               f"{args.seconds} s each; production and two recovery servers on loopback)")
    out.append("")
    out.append("| workload | async | sync | sync / async | p99 async | p99 sync |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for name, label, _, _, _, _, metric in WORKLOADS:
        a, s = median("async", name, metric), median("sync", name, metric)
        unit = {"lat": "ms", "iops": "IOPS", "bw": "MiB/s"}[metric]
        fmt = "{:.3f} " + unit if metric == "lat" else "{:.0f} " + unit
        out.append(f"| {label} | {fmt.format(a)} | {fmt.format(s)} | {s / a:.2f}x | "
                   f"{median('async', name, 'p99'):.2f} ms | {median('sync', name, 'p99'):.2f} ms |")
    commit = median("async", "qd1flush", "lat")
    qd1 = median("sync", "qd1", "lat")
    goals = [
        ("sync QD 1 latency <= 2x async write + flush",
         qd1 <= 2 * commit, f"{qd1:.3f} ms vs {2 * commit:.3f} ms"),
        ("sync QD 16 IOPS >= 0.5x async",
         median("sync", "qd16", "iops") >= 0.5 * median("async", "qd16", "iops"),
         f"{median('sync', 'qd16', 'iops') / median('async', 'qd16', 'iops'):.2f}x"),
        ("sync 1 MiB QD 8 >= 0.8x async",
         median("sync", "seq", "bw") >= 0.8 * median("async", "seq", "bw"),
         f"{median('sync', 'seq', 'bw') / median('async', 'seq', 'bw'):.2f}x"),
    ]
    out.append("")
    for goal, met, figure in goals:
        out.append(f"- {'MET' if met else 'NOT MET'}: {goal} ({figure})")
    report = "\n".join(out).strip() + "\n"
    print("\n" + report)
    results_dir = os.path.join(BENCH_DIR, "results")
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "sync-latest.md"), "w") as handle:
        handle.write("# " + report)


if __name__ == "__main__":
    main()
