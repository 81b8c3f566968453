#!/usr/bin/env python3
"""Initial sync: Redoubt's full sync (super transaction) of an LV that already holds data to a
new recovery server, side by side with `nbdcopy` between two plain qemu-nbd servers on the
same disk. Loopback only; everything started is stopped and removed at the end.

    bench/initial_sync.sh [--size 1GiB] [--dir /var/tmp] [--redoubt-bin target/release/redoubt]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replication as common  # noqa: E402  (spawn, start_ready, stop_all, free_port, read_status)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
SYNC_TIMEOUT_S = 600


def wait_synced(prod_status, rec_status, timeout=SYNC_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prod = common.read_status(prod_status)[1] or {}
        rec = common.read_status(rec_status)[1] or {}
        journal = prod.get("journal_seq")
        if (journal and not prod.get("needs_resync", True)
                and rec.get("applied_seq") == journal and prod.get("applied_seq") == journal):
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"full sync did not finish within {timeout}s: {common.read_status(prod_status)[1]} / "
                       f"{common.read_status(rec_status)[1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=common.parse_size, default=common.parse_size("1GiB"))
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--redoubt-bin", default=os.path.join(REPO, "target", "release", "redoubt"))
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "initial-sync-latest.md"))
    args = ap.parse_args()
    size = args.size
    size_text = common.size_str(size)
    work = tempfile.mkdtemp(prefix="redoubt-initial-sync-", dir=args.dir)
    try:
        prod = os.path.join(work, "prod-a")
        rec = os.path.join(work, "dr-b")
        prod_status = os.path.join(work, "prod.json")
        rec_status = os.path.join(work, "rec.json")
        # 1. Production holds data before any recovery server exists.
        port = common.free_port()
        datatap = [args.redoubt_bin, "datatap", "--dir", prod, "--group", "erp", "--volume", f"lv0:{size_text}",
                   "--listen", f"127.0.0.1:{port}", "--journal-capacity", "4GiB"]
        p, line = common.start_ready(datatap, os.path.join(work, "datatap-fill.log"))
        uri = line.split()[1]
        common.log(f"filling {size_text} through {uri}")
        subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1M",
                        "--iodepth=8", f"--size={size}", "--refill_buffers=1", "--output=/dev/null"], check=True)
        common.stop(p)
        # 2. A recovery server joins: full sync, timed until it has applied everything.
        apply_port = common.free_port()
        apply = [args.redoubt_bin, "apply", "--dir", rec, "--group", "erp", "--name", "dr-b", "--listen",
                 f"127.0.0.1:{apply_port}", "--volume", f"lv0:{size_text}", "--journal-capacity", "4GiB",
                 "--status-file", rec_status]
        common.start_ready(apply, os.path.join(work, "apply.log"))
        started = time.monotonic()
        common.start_ready(datatap + ["--target", f"dr-b=127.0.0.1:{apply_port}", "--compression", "none",
                                      "--full-sync", "--status-file", prod_status],
                           os.path.join(work, "datatap-sync.log"))
        finished = wait_synced(prod_status, rec_status)
        redoubt_s = finished - started
        replica = os.path.join(rec, "groups", "erp", "replication", "lv0")
        production = os.path.join(prod, "groups", "erp", "replication", "lv0")
        identical = subprocess.run(["cmp", "-s", replica, production]).returncode == 0
        common.stop_all()
        # 3. Baseline: nbdcopy from one qemu-nbd to another, same data, same disk.
        source = os.path.join(work, "source.img")
        target = os.path.join(work, "target.img")
        shutil.copyfile(production, source)
        with open(target, "wb") as f:
            f.truncate(size)
        ports = []
        for path in (source, target):
            qport = common.free_port()
            common.spawn(["qemu-nbd", "--cache=none", "--aio=native", "--format=raw", "--persistent",
                          "--shared=8", "-b", "127.0.0.1", "-p", str(qport), "-x", "lv0", path],
                         subprocess.DEVNULL, subprocess.DEVNULL)
            ports.append(qport)
        for qport in ports:
            deadline = time.monotonic() + 10
            while subprocess.run(["nbdinfo", "--size", f"nbd://127.0.0.1:{qport}/lv0"],
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("qemu-nbd did not come up")
                time.sleep(0.1)
        started = time.monotonic()
        subprocess.run(["nbdcopy", f"nbd://127.0.0.1:{ports[0]}/lv0", f"nbd://127.0.0.1:{ports[1]}/lv0"], check=True)
        nbdcopy_s = time.monotonic() - started
        common.stop_all()
        mib = size / (1 << 20)
        report = "\n".join([
            f"# Initial sync benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            "```",
            "bench/initial_sync.sh " + " ".join(sys.argv[1:]),
            "```",
            "",
            f"- machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; files under {args.dir}",
            f"- data: {size_text} of fio-random data written through the datatap before the recovery server existed",
            "- redoubt: `redoubt apply` (new) + `redoubt datatap --target … --full-sync --compression none`, "
            "timed from the datatap's start until the recovery server applied every record",
            "- baseline: `nbdcopy nbd://qemu-nbd(source) nbd://qemu-nbd(target)` (`--cache=none --aio=native`)",
            "",
            "| what | time | MiB/s | vs nbdcopy |",
            "|---|---:|---:|---:|",
            f"| Redoubt full sync (super transaction) | {redoubt_s:.2f} s | {mib / redoubt_s:.0f} | {nbdcopy_s / redoubt_s:.2f}x |",
            f"| nbdcopy between two qemu-nbd | {nbdcopy_s:.2f} s | {mib / nbdcopy_s:.0f} | 1.00x |",
            "",
            f"Replica byte-identical to production after the sync: {'yes' if identical else 'NO'}.",
            "",
        ])
        print(report)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
        return 0 if identical else 1
    finally:
        common.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
