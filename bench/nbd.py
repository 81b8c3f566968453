#!/usr/bin/env python3
"""Side-by-side NBD write/read benchmark (python3 stdlib only).

Serves a fresh volume through each NBD server under test, one after another,
on the same disk, drives each with fio's nbd engine, and prints a markdown
table with ratios against the qemu-nbd baseline.  Run via bench/nbd.sh.
"""

import argparse
import atexit
import ctypes
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
EXPORT = "bench"
READY_TIMEOUT = 10.0
TRANSPORT = {"unix": False}  # set from --unix
ALL_SERVERS = ("qemu-nbd", "nbdkit", "redoubt")
RATIO_ORDER = ("redoubt", "nbdkit")  # ratio columns, in this order
BASELINE = "qemu-nbd"

# name, label, fio rw, block size, iodepth, metric shown ("bw" or "iops"), timed?
WORKLOADS = [
    ("fill", "fill: seq 1 MiB write, whole volume once (untimed, informational)", "write", "1M", 8, "bw", False),
    ("seqwrite", "a. seq 1 MiB write, qd 8", "write", "1M", 8, "bw", True),
    ("randwrite", "b. rand 4 KiB write, qd 16", "randwrite", "4k", 16, "iops", True),
    ("randread", "c. rand 4 KiB read, qd 16", "randread", "4k", 16, "iops", True),
]


def log(msg):
    print(f"[nbd-bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

_children = []  # Popen objects still to be stopped
_libc = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    pass


def _pdeathsig():
    # If this script dies (even by SIGKILL) the kernel sends SIGTERM to servers.
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd, stdout, stderr):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         preexec_fn=_pdeathsig)
    _children.append(p)
    return p


def stop(p, timeout=10.0):
    """SIGTERM, then SIGKILL after timeout. Returns a note if it was not clean."""
    note = None
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            note = f"did not exit within {timeout:.0f}s of SIGTERM; killed"
    if p in _children:
        _children.remove(p)
    return note


def stop_all():
    for p in list(_children):
        try:
            stop(p, timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort during teardown
            pass


def nbd_uri(port):
    if TRANSPORT["unix"]:
        return f"nbd+unix:///{EXPORT}?socket={port}"
    return f"nbd://127.0.0.1:{port}/{EXPORT}"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nbd_size(uri):
    try:
        r = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    try:
        return int(r.stdout.strip())
    except ValueError:
        return None


def wait_nbd(p, uri, deadline, logpath):
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"exited with status {p.returncode} before serving; log: {tail(logpath)}")
        size = nbd_size(uri)
        if size is not None:
            return size
        time.sleep(0.1)
    raise RuntimeError(f"not serving {uri} within {READY_TIMEOUT:.0f}s; log: {tail(logpath)}")


def tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        return " | ".join(lines[-n:]) or "(empty)"
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- servers

class Server:
    name = "?"
    unavailable = None  # reason string if it cannot run on this machine
    note = None         # something to print under the table

    def cmdline(self, path, port):
        raise NotImplementedError

    def start(self, workdir, size, port):
        raise NotImplementedError


class QemuNbd(Server):
    name = "qemu-nbd"

    def __init__(self):
        if not shutil.which("qemu-nbd"):
            self.unavailable = "qemu-nbd not installed"

    def cmdline(self, path, port):
        where = ["-k", port] if TRANSPORT["unix"] else ["-b", "127.0.0.1", "-p", str(port)]
        return ["qemu-nbd", "--cache=none", "--aio=native", "--format=raw", "--persistent",
                "--shared=8"] + where + ["-x", EXPORT, path]

    def start(self, workdir, size, port):
        path = os.path.join(workdir, "vol.img")
        make_file(path, size)
        logpath = os.path.join(workdir, "server.log")
        lf = open(logpath, "w")
        p = spawn(self.cmdline(path, port), lf, lf)
        lf.close()
        uri = nbd_uri(port)
        wait_nbd(p, uri, time.monotonic() + READY_TIMEOUT, logpath)
        return p, uri


class Nbdkit(Server):
    name = "nbdkit"

    def __init__(self):
        self.cache_none = True
        if not shutil.which("nbdkit"):
            self.unavailable = "nbdkit not installed"
            return
        h = subprocess.run(["nbdkit", "file", "--help"], capture_output=True, text=True)
        if "cache=" not in (h.stdout + h.stderr):
            self.cache_none = False
            self.note = "nbdkit: this file plugin has no cache= parameter; ran WITHOUT cache=none (page cache in play)"

    def cmdline(self, path, port):
        where = ["-U", port] if TRANSPORT["unix"] else ["-i", "127.0.0.1", "-p", str(port)]
        cmd = ["nbdkit", "--exit-with-parent", "-f"] + where + ["-e", EXPORT, "file", path]
        if self.cache_none:
            cmd.append("cache=none")
        return cmd

    def start(self, workdir, size, port):
        path = os.path.join(workdir, "vol.img")
        make_file(path, size)
        logpath = os.path.join(workdir, "server.log")
        lf = open(logpath, "w")
        p = spawn(self.cmdline(path, port), lf, lf)
        lf.close()
        uri = nbd_uri(port)
        wait_nbd(p, uri, time.monotonic() + READY_TIMEOUT, logpath)
        return p, uri


class Redoubt(Server):
    name = "redoubt"

    def __init__(self, binpath, size, extra=()):
        self.size_arg = size_str(size)
        self.extra = list(extra)
        self.bin = binpath if os.path.isabs(binpath) else os.path.join(REPO_ROOT, binpath)
        if not (os.path.isfile(self.bin) and os.access(self.bin, os.X_OK)):
            self.unavailable = "not built (run cargo build --release)"
            return
        try:
            h = subprocess.run([self.bin, "datatap", "--help"], capture_output=True, text=True, timeout=10)
            ok = h.returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            ok = False
        if not ok:
            self.unavailable = "not built (run cargo build --release) - binary has no `datatap` subcommand yet"

    def cmdline(self, path, port):
        return [self.bin, "datatap", "--dir", path, "--volume", f"{EXPORT}:{self.size_arg}",
                "--listen", f"unix:{port}" if TRANSPORT["unix"] else f"127.0.0.1:{port}"] + self.extra

    def start(self, workdir, size, port):
        store = os.path.join(workdir, "store")
        os.mkdir(store)
        logpath = os.path.join(workdir, "server.log")
        lf = open(logpath, "w")
        p = spawn(self.cmdline(store, port), subprocess.PIPE, lf)
        lf.close()
        ready = threading.Event()

        def reader():
            # keep draining stdout for the server's whole life so it never blocks
            with open(logpath + ".stdout", "w") as out:
                for raw in p.stdout:
                    line = raw.decode(errors="replace")
                    out.write(line)
                    out.flush()
                    if line.startswith("ready"):
                        ready.set()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.is_set():
            if p.poll() is not None:
                raise RuntimeError(f"exited with status {p.returncode} before printing `ready`; "
                                   f"stderr: {tail(logpath)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no `ready` line on stdout within {READY_TIMEOUT:.0f}s; "
                                   f"stderr: {tail(logpath)}")
            ready.wait(0.1)
        uri = nbd_uri(port)
        got = wait_nbd(p, uri, time.monotonic() + READY_TIMEOUT, logpath)
        if got != size:
            raise RuntimeError(f"export size {got} != requested {size}")
        return p, uri


# ---------------------------------------------------------------- helpers

def parse_size(s):
    s = s.strip()
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
    i = len(s)
    while i > 0 and not s[i - 1].isdigit():
        i -= 1
    num, unit = s[:i], s[i:].lower()
    if not num or unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (use e.g. 1GiB, 512MiB)")
    n = int(num) * units[unit]
    if n <= 0 or n % (1 << 20):
        raise argparse.ArgumentTypeError(f"size {s!r} must be a positive multiple of 1 MiB")
    return n


def size_str(n):
    if n % (1 << 30) == 0:
        return f"{n >> 30}GiB"
    return f"{n >> 20}MiB"


def make_file(path, size):
    # sparse, like a freshly created volume; the fill pass then allocates it
    subprocess.run(["truncate", "-s", str(size), path], check=True)


def run_fio(uri, wl, runtime, outdir, server):
    name, _label, rw, bs, qd, _metric, timed = wl
    out = os.path.join(outdir, f"{server}-{name}.json")
    cmd = ["fio", f"--name={server}-{name}", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
           f"--bs={bs}", f"--iodepth={qd}", "--numjobs=1", "--output-format=json", f"--output={out}"]
    if timed:
        cmd += [f"--runtime={runtime}", "--time_based"]
    else:
        cmd += ["--size=100%"]
    os.sync()
    r = subprocess.run(cmd, capture_output=True, text=True)
    try:
        with open(out) as f:
            text = f.read()
        # fio may print warnings before the JSON object
        data = json.loads(text[text.index("{"):])
        job = data["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        raise RuntimeError(f"fio failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    d = job["read" if "read" in rw else "write"]
    if job.get("error") or r.returncode != 0 or d["io_bytes"] == 0:
        raise RuntimeError(f"fio error {job.get('error')} rc {r.returncode}: {r.stderr.strip()[-300:]}")
    pct = d["clat_ns"].get("percentile", {})
    p99 = pct.get("99.000000")
    return {
        "iops": d["iops"],
        "mibs": d["bw_bytes"] / (1 << 20),
        "p99_ms": p99 / 1e6 if p99 is not None else None,
        "io_mib": d["io_bytes"] / (1 << 20),
        "secs": job.get("job_runtime", 0) / 1000.0,
    }


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(testdir):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / (1 << 20):.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    df = sh(["df", "-T", testdir]).splitlines()
    fs = df[-1].split() if len(df) > 1 else ["?", "?"]
    return {
        "nproc": sh(["nproc"]),
        "kernel": platform.release(),
        "cpu": cpu,
        "mem": mem,
        "fs": f"{fs[1]} on {fs[0]} (mounted at {fs[-1]})",
        "os": sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "fio": sh(["fio", "--version"]),
        "qemu": sh(["qemu-nbd", "--version"]).splitlines()[0] if shutil.which("qemu-nbd") else "-",
        "nbdkit": sh(["nbdkit", "--version"]).replace("nbdkit ", "") if shutil.which("nbdkit") else "-",
        "load": open("/proc/loadavg").read().split()[0:3] if os.path.exists("/proc/loadavg") else [],
        "git": sh(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]),
    }


def fmt_metric(res, metric):
    if metric == "bw":
        return f"{res['mibs']:.0f} MiB/s"
    return f"{res['iops']:.0f} IOPS"


def fmt_p99(res):
    if res.get("p99_ms") is None:
        return "-"
    v = res["p99_ms"]
    return f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def value(res, metric):
    return res["mibs"] if metric == "bw" else res["iops"]


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(
        prog=os.environ.get("NBD_BENCH_ARGV0", "nbd.py"),
        description="Side-by-side NBD benchmark: qemu-nbd (baseline), nbdkit file, redoubt datatap.")
    ap.add_argument("--dir", default=os.environ.get("NBD_BENCH_DIR", "/var/tmp"),
                    help="parent dir for the temporary test files (default /var/tmp; env NBD_BENCH_DIR)")
    ap.add_argument("--runtime", type=int, default=int(os.environ.get("NBD_BENCH_RUNTIME", "10")),
                    help="seconds per timed workload (default 10; env NBD_BENCH_RUNTIME)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s per workload")
    ap.add_argument("--size", type=parse_size, default=parse_size(os.environ.get("NBD_BENCH_SIZE", "1GiB")),
                    help="volume size (default 1GiB; env NBD_BENCH_SIZE)")
    ap.add_argument("--servers", default=os.environ.get("NBD_BENCH_SERVERS", ",".join(ALL_SERVERS)),
                    help=f"comma list from {','.join(ALL_SERVERS)} (default all)")
    ap.add_argument("--redoubt-bin", default=os.environ.get("REDOUBT_BIN", "target/release/redoubt"),
                    help="redoubt binary, relative to the repo root (default target/release/redoubt; env REDOUBT_BIN)")
    ap.add_argument("--redoubt-args", default=os.environ.get("REDOUBT_ARGS", ""),
                    help="extra datatap arguments, shell-quoted, e.g. '--journal-capacity 8GiB' (env REDOUBT_ARGS)")
    ap.add_argument("--unix", action="store_true", default=os.environ.get("NBD_BENCH_UNIX") == "1",
                    help="serve over unix sockets instead of TCP 127.0.0.1 (env NBD_BENCH_UNIX=1)")
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "nbd-latest.md"),
                    help="where to write the markdown (default bench/results/nbd-latest.md; '-' = stdout only)")
    args = ap.parse_args()
    TRANSPORT["unix"] = args.unix
    if args.quick:
        args.runtime = 3
    if args.runtime < 1:
        ap.error("--runtime must be >= 1")
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in wanted:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; choose from {','.join(ALL_SERVERS)}")
    wanted = [s for s in ALL_SERVERS if s in wanted]  # fixed column order
    for tool in ("fio", "nbdinfo", "truncate"):
        if not shutil.which(tool):
            sys.exit(f"nbd-bench: required tool {tool!r} not found")

    argv_shown = " ".join([os.environ.get("NBD_BENCH_ARGV0", "bench/nbd.py")] +
                          [shlex.quote(a) for a in sys.argv[1:]])

    os.makedirs(args.dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="redoubt-nbd-bench.", dir=args.dir)

    def cleanup():
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    free = shutil.disk_usage(tmp).free
    if free < 3 * args.size:
        log(f"warning: only {free >> 20} MiB free in {args.dir}; the datatap needs volume + journal space")

    servers = {
        "qemu-nbd": QemuNbd(),
        "nbdkit": Nbdkit(),
        "redoubt": Redoubt(args.redoubt_bin, args.size, shlex.split(args.redoubt_args)),
    }
    info = machine_info(tmp)  # includes the load average before the run
    results = {}   # server -> workload -> result dict
    status = {}    # server -> reason if no figures
    notes = []
    cmds = {}

    for name in wanted:
        srv = servers[name]
        if srv.note:
            notes.append(srv.note)
        cmds[name] = " ".join(shlex.quote(c) for c in srv.cmdline("FILE" if name != "redoubt" else "DIR", "SOCKET" if args.unix else "PORT")) \
            if not srv.unavailable else None
        if srv.unavailable:
            status[name] = srv.unavailable
            log(f"{name}: {srv.unavailable}")
            continue
        work = os.path.join(tmp, name)
        os.mkdir(work)
        port = os.path.join(work, "nbd.sock") if args.unix else free_port()
        log(f"{name}: starting on {nbd_uri(port)}")
        p = None
        try:
            p, uri = srv.start(work, args.size, port)
            results[name] = {}
            for wl in WORKLOADS:
                log(f"{name}: {wl[0]} ({'%ds' % args.runtime if wl[6] else 'whole volume'})")
                r = run_fio(uri, wl, args.runtime, work, name)
                results[name][wl[0]] = r
                log(f"{name}: {wl[0]}: {r['mibs']:.1f} MiB/s, {r['iops']:.0f} IOPS, p99 {fmt_p99(r)}")
        except RuntimeError as e:
            if p is not None:
                alive = "still running" if p.poll() is None else f"had exited with status {p.returncode}"
                e = f"{e} [server {alive}; server stderr: {tail(os.path.join(work, 'server.log'), 8)}]"
            status[name] = f"failed: {e}"
            log(f"{name}: FAILED: {e}")
        finally:
            if p is not None:
                n = stop(p)
                if n:
                    notes.append(f"{name}: {n}")
            shutil.rmtree(work, ignore_errors=True)
            os.sync()

    # ------------------------------------------------------------ report
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = []
    L.append(f"# NBD benchmark ({now})")
    L.append("")
    L.append("```")
    L.append(argv_shown)
    L.append("```")
    L.append("")
    L.append(f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem']}, kernel {info['kernel']}, {info['os']}; "
             f"load average at start {' '.join(info['load'])} (other work on the box skews results)")
    L.append(f"- test dir: {args.dir}, filesystem {info['fs']}")
    L.append(f"- volume: {size_str(args.size)} per server, fresh each time; qemu-nbd/nbdkit files created sparse "
             f"with `truncate -s`, redoubt creates its own; each volume is filled once by a sequential pass before the timed runs")
    L.append(f"- fio: {info['fio']}, ioengine=nbd over {'unix socket' if args.unix else 'TCP 127.0.0.1'}, 1 job, {args.runtime} s per timed workload (time_based)")
    L.append(f"- versions: {info['qemu']}; nbdkit {info['nbdkit']}; repo HEAD {info['git']}")
    for name in wanted:
        if cmds.get(name):
            L.append(f"- {name}: `{cmds[name]}`")
    L.append("")

    ran = [s for s in wanted]
    hdr = ["workload"]
    for s in ran:
        hdr += [s, f"{s} p99"]
    others = [s for s in RATIO_ORDER if s in ran] if BASELINE in ran else []
    for s in others:
        hdr.append(f"{s} / {BASELINE}")
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    for wl in WORKLOADS:
        wname, label, metric = wl[0], wl[1], wl[5]
        row = [label]
        for s in ran:
            r = results.get(s, {}).get(wname)
            if r:
                row += [fmt_metric(r, metric), fmt_p99(r)]
            else:
                why = "not built" if s in status and status[s].startswith("not built") else "n/a"
                row += [why, "-"]
        base = results.get(BASELINE, {}).get(wname)
        for s in others:
            r = results.get(s, {}).get(wname)
            if r and base and value(base, metric) > 0:
                row.append(f"{value(r, metric) / value(base, metric):.2f}x")
            else:
                row.append("-")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Ratios compare throughput (MiB/s for 1 MiB rows, IOPS for 4 KiB rows); >1 is faster than qemu-nbd. "
             "p99 is fio's completion latency.")
    for s in wanted:
        if s in status:
            L.append("")
            L.append(f"{s}: {status[s]}")
    for n in notes:
        L.append("")
        L.append(n)
    text = "\n".join(L) + "\n"

    sys.stdout.write(text)
    sys.stdout.flush()
    if args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")
    # non-zero if a server that should have run failed (not-built is not a failure)
    return 1 if any(v.startswith("failed") for v in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
