#!/usr/bin/env python3
"""Replication throughput and lag benchmark (python3 stdlib only).

One run, on one disk, over loopback TCP:
  1. baselines: iperf3 loopback TCP throughput, fio sequential direct write to the disk;
  2. replication throughput: write SIZE through the datatap (fio nbd engine) and time it
     from the start until the recovery server's applied_seq reaches production's journal_seq;
  3. steady-state lag at 50 % and 90 % of the datatap's measured ingest rate (fio --rate).
Prints a markdown table and writes bench/results/replication-latest.md.  Run via
bench/replication.sh; see bench/README.md.
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
GROUP = "erp"
RECOVERY_NAME = "dr-b"
VOLUME = "lv0"
READY_TIMEOUT = 15.0
POLL = 0.1           # status polling interval (the files are rewritten every 200 ms)
STALL = 30.0         # no applied_seq progress for this long = replication stalled
BS = 1 << 20         # fio block size everywhere: 1 MiB
MIB = 1 << 20


def log(msg):
    print(f"[repl-bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

_children = []
_libc = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    pass


def _pdeathsig():
    # If this script dies (even by SIGKILL) the kernel sends SIGTERM to the children.
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd, stdout, stderr):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         preexec_fn=_pdeathsig)
    _children.append(p)
    return p


def stop(p, timeout=15.0):
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
    for p in reversed(list(_children)):
        try:
            stop(p, timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort during teardown
            pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        return " | ".join(lines[-n:]) or "(empty)"
    except OSError:
        return "(no log)"


def start_ready(cmd, logpath, what=None, spawn_fn=None):
    """Start a redoubt process, wait for its `ready ...` stdout line; returns (p, line).

    `what` names it in errors (default: its subcommand); `spawn_fn` lets another script
    track the process with its own children (default: this module's `spawn`)."""
    what = what or f"`{cmd[1]}`"
    lf = open(logpath, "w")
    p = (spawn_fn or spawn)(cmd, subprocess.PIPE, lf)
    lf.close()
    got = {}
    ready = threading.Event()

    def reader():
        # keep draining stdout for the process's whole life so it never blocks
        with open(logpath + ".stdout", "w") as out:
            for raw in p.stdout:
                line = raw.decode(errors="replace")
                out.write(line)
                out.flush()
                if line.startswith("ready") and not ready.is_set():
                    got["line"] = line.strip()
                    ready.set()

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.is_set():
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with status {p.returncode} before printing `ready`; "
                               f"stderr: {tail(logpath)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no `ready` line within {READY_TIMEOUT:.0f}s; stderr: {tail(logpath)}")
        ready.wait(0.1)
    return p, got["line"]


# ---------------------------------------------------------------- status files

def read_status(path):
    """(mtime wall-clock seconds, parsed JSON) or (None, None) if not readable yet."""
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            return st.st_mtime, json.load(f)
    except (OSError, ValueError):
        return None, None


def target0(prod):
    t = prod.get("targets") or []
    return t[0] if t else {}


class Sampler:
    """Polls both status files every POLL s in a thread; keeps distinct snapshots."""

    def __init__(self, prod_path, rec_path):
        self.prod_path, self.rec_path = prod_path, rec_path
        self.prod = []   # (mtime, json)
        self.rec = []
        self.flags = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            for path, lst in ((self.prod_path, self.prod), (self.rec_path, self.rec)):
                mt, js = read_status(path)
                if js is None:
                    continue
                with self._lock:
                    if not lst or lst[-1][0] != mt:
                        lst.append((mt, js))
                if js.get("needs_resync"):
                    self.flags.add(f"{js.get('role', '?')} needs_resync")
                if js.get("sync_degraded"):
                    self.flags.add("production sync_degraded")
                for t in js.get("targets") or []:
                    if t.get("needs_resync"):
                        self.flags.add(f"target {t.get('server')} needs_resync")
                    if t.get("last_error"):
                        self.flags.add(f"target {t.get('server')} last_error: {t.get('last_error')}")
            self._stop.wait(POLL)

    def snapshot(self):
        with self._lock:
            return list(self.prod), list(self.rec)

    def latest(self):
        with self._lock:
            return (self.prod[-1] if self.prod else (None, None)), (self.rec[-1] if self.rec else (None, None))

    def wait_fresh_prod(self, after, timeout=5.0):
        """First production snapshot rendered after wall time `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for mt, js in reversed(self.prod):
                    if mt > after:
                        return mt, js
            time.sleep(POLL / 2)
        raise RuntimeError("production status file not refreshed (datatap hung?)")

    def wait_applied(self, seq, timeout, stall=STALL):
        """Wall time (status mtime) at which the recovery server first reported applied_seq >= seq.

        Raises if applied_seq does not move for `stall` seconds or `timeout` passes."""
        deadline = time.monotonic() + timeout
        seen = 0
        last, last_move = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                rec = self.rec[seen:]
                seen = len(self.rec)
            for mt, js in rec:
                a = js.get("applied_seq", -1)
                if a >= seq:
                    return mt
                if a != last:
                    last, last_move = a, time.monotonic()
            if time.monotonic() - last_move > stall:
                (_, prod), (_, r) = self.latest()
                raise RuntimeError(
                    f"replication stalled: recovery applied_seq stuck at {last} for {stall:.0f}s "
                    f"(waiting for {seq}); recovery status {json.dumps(r)}; production target "
                    f"{json.dumps(target0(prod or {}))}")
            time.sleep(POLL / 2)
        raise RuntimeError(f"recovery applied_seq did not reach {seq} within {timeout:.0f}s")

    def stop(self):
        self._stop.set()
        self._t.join(2)


# ---------------------------------------------------------------- tools

def parse_size(s):
    s = s.strip()
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
    i = len(s)
    while i > 0 and not s[i - 1].isdigit():
        i -= 1
    num, unit = s[:i], s[i:].lower()
    if not num or unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (use e.g. 2GiB, 512MiB)")
    n = int(num) * units[unit]
    if n <= 0 or n % MIB:
        raise argparse.ArgumentTypeError(f"size {s!r} must be a positive multiple of 1 MiB")
    return n


def size_str(n):
    if n % (1 << 30) == 0:
        return f"{n >> 30}GiB"
    return f"{n >> 20}MiB"


def run_fio(args_list, outpath, timeout):
    cmd = ["fio"] + args_list + ["--numjobs=1", "--output-format=json", f"--output={outpath}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"fio did not finish within {timeout:.0f}s")
    try:
        with open(outpath) as f:
            text = f.read()
        data = json.loads(text[text.index("{"):])  # fio may print warnings first
        job = data["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        raise RuntimeError(f"fio failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    d = job["write"]
    if job.get("error") or r.returncode != 0 or d["io_bytes"] == 0:
        raise RuntimeError(f"fio error {job.get('error')} rc {r.returncode}: {r.stderr.strip()[-300:]}")
    p99 = d["clat_ns"].get("percentile", {}).get("99.000000")
    return {
        "mibs": d["bw_bytes"] / MIB,
        "bytes": d["io_bytes"],
        "secs": job.get("job_runtime", 0) / 1000.0,
        "p99_ms": p99 / 1e6 if p99 is not None else None,
        "cmd": cmd,
    }


def iperf3(seconds, workdir):
    port = free_port()
    lf = open(os.path.join(workdir, "iperf3-server.log"), "w")
    srv = spawn(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], lf, lf)
    lf.close()
    try:
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                               capture_output=True, text=True, timeout=seconds + 30)
            try:
                data = json.loads(r.stdout)
            except ValueError:
                data = {}
            err = data.get("error") or (r.stderr.strip() if r.returncode else "")
            if not err:
                break
            if "refused" in err and time.monotonic() < deadline and srv.poll() is None:
                time.sleep(0.2)
                continue
            raise RuntimeError(f"iperf3: {err}")
        end = data["end"]
        bps = end.get("sum_received", end.get("sum", {}))["bits_per_second"]
        return {"mibs": bps / 8 / MIB, "secs": seconds,
                "cmd": f"iperf3 -s -B 127.0.0.1 -p PORT / iperf3 -c 127.0.0.1 -p PORT -t {seconds} -J"}
    finally:
        stop(srv)


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
        "iperf3": (sh(["iperf3", "--version"]).splitlines() or ["-"])[0] if shutil.which("iperf3") else "-",
        "git": sh(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]),
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[0:3])
    except OSError:
        return "?"


def q(cmd):
    return " ".join(shlex.quote(c) for c in cmd)


# ---------------------------------------------------------------- benchmark phases

def wait_caught_up(sampler, timeout):
    """Wait until the recovery server has applied everything production has journaled."""
    mt, prod = sampler.wait_fresh_prod(time.time())
    seq = prod["journal_seq"]
    sampler.wait_applied(seq, timeout)
    return seq


def throughput_phase(uri, size, sampler, workdir):
    wait_caught_up(sampler, 60)
    t0 = time.time()
    fio = run_fio([f"--name=repl-throughput", "--ioengine=nbd", f"--uri={uri}", "--rw=write",
                   "--bs=1M", "--iodepth=8", f"--size={size}"],
                  os.path.join(workdir, "fio-throughput.json"), timeout=3600)
    t_fio = time.time()
    _, prod = sampler.wait_fresh_prod(t_fio)
    final_seq = prod["journal_seq"]
    t_done = sampler.wait_applied(final_seq, timeout=3600)
    t_done = max(t_done, t_fio)  # the status mtime cannot be earlier than the fio end in reality
    wall = t_done - t0
    return {
        "fio": fio,
        "seq": final_seq,
        "wall": wall,
        "tail": t_done - t_fio,
        "mibs": fio["bytes"] / MIB / wall,
    }


def lag_phase(uri, rate_mib, runtime, vol_size, sampler, workdir, pct):
    wait_caught_up(sampler, 120)
    t0 = time.time()
    fio = run_fio([f"--name=repl-lag-{pct}", "--ioengine=nbd", f"--uri={uri}", "--rw=write",
                   "--bs=1M", "--iodepth=8", f"--size={vol_size}", f"--rate={rate_mib}m",
                   f"--runtime={runtime}", "--time_based"],
                  os.path.join(workdir, f"fio-lag-{pct}.json"), timeout=runtime + 120)
    t1 = time.time()
    _, prod = sampler.wait_fresh_prod(t1)
    final_seq = prod["journal_seq"]
    t_done = sampler.wait_applied(final_seq, timeout=3600)
    prods, _ = sampler.snapshot()
    window = [js for mt, js in prods if t0 + 1.0 <= mt <= t1]  # skip fio's first second (start-up)
    if not window:
        raise RuntimeError("no production status samples during the run")
    backlog = [max(0, js["journal_seq"] - target0(js).get("applied_seq", 0)) for js in window]
    unsent = [max(0, js["journal_seq"] - target0(js).get("sent_seq", 0)) for js in window]
    achieved = fio["mibs"]
    mean_rec = sum(backlog) / len(backlog)
    max_rec = max(backlog)
    return {
        "pct": pct,
        "rate": rate_mib,
        "fio": fio,
        "samples": len(window),
        "mean_rec": mean_rec,
        "max_rec": max_rec,
        "mean_unsent": sum(unsent) / len(unsent),
        "mean_mib": mean_rec * BS / MIB,
        "max_mib": max_rec * BS / MIB,
        "mean_lag": mean_rec * BS / MIB / achieved if achieved > 0 else None,
        "max_lag": max_rec * BS / MIB / achieved if achieved > 0 else None,
        "drain": max(t_done, t1) - t1,
    }


# ---------------------------------------------------------------- main

def main():
    argv0 = os.environ.get("REPL_BENCH_ARGV0", "bench/replication.py")
    ap = argparse.ArgumentParser(
        prog=argv0,
        description="Replication throughput and lag (datatap -> apply on 127.0.0.1) next to "
                    "loopback TCP (iperf3) and disk write (fio) baselines.")
    ap.add_argument("--dir", default=os.environ.get("REPL_BENCH_DIR", "/var/tmp"),
                    help="parent dir for the temporary test dirs (default /var/tmp; env REPL_BENCH_DIR)")
    ap.add_argument("--size", type=parse_size, default=None,
                    help="bytes written for the throughput row (default 2GiB, --quick 512MiB; env REPL_BENCH_SIZE)")
    ap.add_argument("--volume-size", type=parse_size, default=None,
                    help="volume size on both sides (default 4GiB, at least --size; env REPL_BENCH_VOLUME_SIZE)")
    ap.add_argument("--runtime", type=int, default=None,
                    help="seconds per steady-state lag run (default 20, --quick 5; env REPL_BENCH_RUNTIME)")
    ap.add_argument("--baseline-runtime", type=int, default=None,
                    help="seconds for iperf3 and the disk fio run (default 10, --quick 3)")
    ap.add_argument("--loads", default=os.environ.get("REPL_BENCH_LOADS", "50,90"),
                    help="lag runs at these percentages of the measured ingest rate (default 50,90)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512MiB, 5 s lag runs, 3 s baselines")
    ap.add_argument("--journal-capacity", default=os.environ.get("REPL_BENCH_JOURNAL", "4GiB"),
                    help="datatap --journal-capacity (default 4GiB)")
    ap.add_argument("--apply-journal-capacity", default=os.environ.get("REPL_BENCH_APPLY_JOURNAL", "auto"),
                    help="apply --journal-capacity: 'auto' (default) = 1.25 x the bytes a phase writes, "
                         "rounded up to GiB, min 1GiB; '' = the binary's default (1GiB)")
    ap.add_argument("--redoubt-bin", default=os.environ.get("REDOUBT_BIN", "target/release/redoubt"),
                    help="redoubt binary, relative to the repo root (default target/release/redoubt; env REDOUBT_BIN)")
    ap.add_argument("--datatap-args", default=os.environ.get("REPL_BENCH_DATATAP_ARGS", ""),
                    help="extra datatap arguments, shell-quoted (use --datatap-args='...')")
    ap.add_argument("--apply-args", default=os.environ.get("REPL_BENCH_APPLY_ARGS", ""),
                    help="extra apply arguments, shell-quoted (use --apply-args='...')")
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "replication-latest.md"),
                    help="markdown output (default bench/results/replication-latest.md; '-' = stdout only)")
    args = ap.parse_args()

    env_size = os.environ.get("REPL_BENCH_SIZE")
    if args.size is None:
        args.size = parse_size(env_size) if env_size else parse_size("512MiB" if args.quick else "2GiB")
    env_vol = os.environ.get("REPL_BENCH_VOLUME_SIZE")
    if args.volume_size is None:
        args.volume_size = parse_size(env_vol) if env_vol else max(parse_size("4GiB"), args.size)
    if args.volume_size < args.size:
        ap.error("--volume-size must be >= --size")
    if args.runtime is None:
        args.runtime = int(os.environ.get("REPL_BENCH_RUNTIME", "5" if args.quick else "20"))
    if args.baseline_runtime is None:
        args.baseline_runtime = 3 if args.quick else 10
    if args.runtime < 2 or args.baseline_runtime < 1:
        ap.error("--runtime must be >= 2 and --baseline-runtime >= 1")
    try:
        loads = [int(x) for x in args.loads.split(",") if x.strip()]
    except ValueError:
        ap.error("--loads: comma-separated integers")
    if any(not 1 <= x <= 100 for x in loads):
        ap.error("--loads: percentages 1..100")
    if not shutil.which("fio"):
        sys.exit("repl-bench: required tool 'fio' not found")
    have_iperf = shutil.which("iperf3") is not None

    binpath = args.redoubt_bin if os.path.isabs(args.redoubt_bin) else os.path.join(REPO_ROOT, args.redoubt_bin)
    built = None
    if not (os.path.isfile(binpath) and os.access(binpath, os.X_OK)):
        built = "not built (run cargo build --release -p redoubt)"
    else:
        h = subprocess.run([binpath, "apply", "--help"], capture_output=True, text=True)
        if h.returncode != 0:
            built = "binary has no `apply` subcommand (rebuild: cargo build --release -p redoubt)"

    argv_shown = " ".join([argv0] + [shlex.quote(a) for a in sys.argv[1:]])
    os.makedirs(args.dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="redoubt-repl-bench.", dir=args.dir)
    def cleanup():
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    need = 2 * args.volume_size + parse_size(args.journal_capacity) + 3 * (1 << 30) + args.size
    free = shutil.disk_usage(tmp).free
    if free < need:
        log(f"warning: {free >> 20} MiB free in {args.dir}, about {need >> 20} MiB may be needed")

    info = machine_info(tmp)
    load_start = loadavg()
    res = {}
    errors = []
    notes = []
    cmds = {}

    # 1a. loopback TCP
    if have_iperf:
        log(f"baseline: iperf3 loopback TCP, {args.baseline_runtime}s")
        try:
            res["tcp"] = iperf3(args.baseline_runtime, tmp)
            cmds["iperf3"] = res["tcp"]["cmd"]
            log(f"baseline: TCP {res['tcp']['mibs']:.0f} MiB/s")
        except (RuntimeError, KeyError, subprocess.TimeoutExpired) as e:
            errors.append(f"iperf3 failed: {e}")
            log(f"iperf3 FAILED: {e}")
    else:
        errors.append("iperf3 not installed (apt-get install iperf3): no TCP baseline")

    # 1b. disk sequential write
    log(f"baseline: fio direct sequential write to {tmp}, {args.baseline_runtime}s")
    diskfile = os.path.join(tmp, "disk-baseline.fio")
    try:
        os.sync()
        r = run_fio(["--name=disk-seqwrite", f"--filename={diskfile}", f"--size={args.size}",
                     "--rw=write", "--bs=1M", "--iodepth=8", "--ioengine=libaio", "--direct=1",
                     f"--runtime={args.baseline_runtime}", "--time_based"],
                    os.path.join(tmp, "fio-disk.json"), timeout=args.baseline_runtime + 600)
        res["disk"] = r
        cmds["disk"] = q(r["cmd"][:-2]).replace(tmp, "TMP")
        log(f"baseline: disk {r['mibs']:.0f} MiB/s")
    except RuntimeError as e:
        errors.append(f"disk fio failed: {e}")
        log(f"disk fio FAILED: {e}")
    finally:
        try:
            os.unlink(diskfile)
        except OSError:
            pass
        os.sync()

    # 2 + 3. replication: a fresh apply + datatap pair per phase
    if built:
        errors.append(f"redoubt: {built}")
        log(f"redoubt: {built}")
    else:
        def apply_capacity(planned_bytes):
            if args.apply_journal_capacity != "auto":
                return args.apply_journal_capacity
            # the recovery's journal copy and undo journal are both this size; room for the whole phase
            gib = max(1, -(-int(planned_bytes * 1.25) // (1 << 30)))
            return f"{gib}GiB"

        phase_no = [0]

        def with_pair(planned_bytes, body):
            """Start apply + datatap on fresh dirs, wait until connected, run body(uri, sampler)."""
            phase_no[0] += 1
            base = os.path.join(tmp, f"phase{phase_no[0]}")
            d1, d2 = os.path.join(base, "prod-a"), os.path.join(base, "dr-b")
            os.makedirs(d1)
            os.makedirs(d2)
            p1, p2 = free_port(), free_port()
            vol = f"{VOLUME}:{size_str(args.volume_size)}"
            cap = apply_capacity(planned_bytes)
            apply_cmd = [binpath, "apply", "--dir", d2, "--group", GROUP, "--name", RECOVERY_NAME,
                         "--listen", f"127.0.0.1:{p2}", "--volume", vol,
                         "--status-file", os.path.join(d2, "status.json")]
            if cap:
                apply_cmd += ["--journal-capacity", cap]
            apply_cmd += shlex.split(args.apply_args)
            tap_cmd = [binpath, "datatap", "--dir", d1, "--group", GROUP, "--volume", vol,
                       "--listen", f"127.0.0.1:{p1}", "--target", f"{RECOVERY_NAME}=127.0.0.1:{p2}",
                       "--compression", "none", "--journal-capacity", args.journal_capacity,
                       "--status-file", os.path.join(d1, "status.json")] + shlex.split(args.datatap_args)

            def shown(cmd):
                return (q(cmd).replace(binpath, "redoubt").replace(base, "TMP")
                        .replace(str(p1), "P1").replace(str(p2), "P2"))

            pa = pt = sampler = None
            alog, tlog = os.path.join(base, "apply.log"), os.path.join(base, "datatap.log")
            try:
                log(f"starting apply on 127.0.0.1:{p2} (journal capacity {cap or 'default'})")
                pa, line = start_ready(apply_cmd, alog)
                log(f"starting datatap on 127.0.0.1:{p1}")
                pt, line = start_ready(tap_cmd, tlog)
                uri = line.split(None, 1)[1]
                sampler = Sampler(os.path.join(d1, "status.json"), os.path.join(d2, "status.json"))
                deadline = time.monotonic() + READY_TIMEOUT
                while True:
                    (_, prod), (_, rec) = sampler.latest()
                    if prod and target0(prod).get("connected") and rec is not None:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"datatap not connected to the recovery server within "
                                           f"{READY_TIMEOUT:.0f}s; production status {prod}")
                    time.sleep(POLL)
                out = body(uri, sampler)
                out["apply_cmd"], out["tap_cmd"] = shown(apply_cmd), shown(tap_cmd)
                return out
            except RuntimeError as e:
                for p, what, lp in ((pt, "datatap", tlog), (pa, "apply", alog)):
                    if p is not None:
                        alive = "still running" if p.poll() is None else f"exited with status {p.returncode}"
                        e = f"{e} [{what} {alive}; stderr: {tail(lp, 4)}]"
                raise RuntimeError(str(e)) from None
            finally:
                if sampler is not None:
                    notes.extend(f for f in sorted(sampler.flags) if f not in notes)
                    sampler.stop()
                for p, what in ((pt, "datatap"), (pa, "apply")):
                    if p is not None:
                        n = stop(p)
                        if n:
                            notes.append(f"{what}: {n}")
                shutil.rmtree(base, ignore_errors=True)
                os.sync()

        ingest = None
        try:
            log(f"replication throughput: writing {size_str(args.size)} (fio nbd, 1 MiB, qd 8)")
            t = with_pair(args.size, lambda uri, smp: throughput_phase(uri, args.size, smp, tmp))
            res["repl"] = t
            ingest = t["fio"]["mibs"]
            cmds["apply"], cmds["datatap"] = t["apply_cmd"], t["tap_cmd"]
            cmds["fio-throughput"] = q(["--uri=URI" if c.startswith("--uri=") else c
                                        for c in t["fio"]["cmd"][:-2]])
            log(f"replication: ingest {ingest:.0f} MiB/s; replicated in {t['wall']:.2f}s "
                f"= {t['mibs']:.0f} MiB/s (tail after fio {t['tail']:.2f}s, journal_seq {t['seq']})")
        except RuntimeError as e:
            errors.append(f"replication throughput failed: {e}")
            log(f"replication throughput FAILED: {e}")

        res["lag"] = []
        for pct in (loads if ingest else []):
            rate = max(1, int(ingest * pct / 100))
            log(f"lag: {pct}% of ingest = {rate} MiB/s for {args.runtime}s")
            try:
                lg = with_pair(rate * MIB * args.runtime,
                               lambda uri, smp: lag_phase(uri, rate, args.runtime, args.volume_size, smp, tmp, pct))
            except RuntimeError as e:
                errors.append(f"lag run at {pct}% failed: {e}")
                log(f"lag {pct}% FAILED: {e}")
                continue
            res["lag"].append(lg)
            cmds[f"apply ({pct}% run)"] = lg["apply_cmd"]
            cmds.setdefault("fio-lag", q(["--uri=URI" if c.startswith("--uri=") else c
                                          for c in lg["fio"]["cmd"][:-2]])
                            .replace(f"--rate={rate}m", "--rate=Xm").replace(f"-lag-{pct} ", "-lag-PCT "))
            log(f"lag {pct}%: achieved {lg['fio']['mibs']:.0f} MiB/s, backlog mean {lg['mean_rec']:.1f} "
                f"max {lg['max_rec']} records, lag mean {lg['mean_lag']:.2f}s max {lg['max_lag']:.2f}s")

    load_end = loadavg()

    # ------------------------------------------------------------ report
    def mibs(x):
        return f"{x:.0f} MiB/s"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = [f"# Replication benchmark ({now})", "", "```", argv_shown, "```", ""]
    L.append(f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem']}, kernel {info['kernel']}, "
             f"{info['os']}; load average {load_start} at start, {load_end} at end "
             f"(other work on the box skews results)")
    L.append(f"- test dir: {args.dir}, filesystem {info['fs']}; production and recovery on the same disk")
    L.append(f"- volume {VOLUME}: {size_str(args.volume_size)} on both sides, fresh; throughput row writes "
             f"{size_str(args.size)}; lag runs {args.runtime} s each; baselines {args.baseline_runtime} s each")
    L.append(f"- versions: {info['fio']}; {info['iperf3']}; repo HEAD {info['git']}")
    for k in ["iperf3", "disk", "apply", "datatap", "fio-throughput"] + \
            [f"apply ({p}% run)" for p in loads] + ["fio-lag"]:
        if k in cmds:
            L.append(f"- {k}: `{cmds[k]}`")
    L.append("")
    tcp = res.get("tcp", {}).get("mibs")
    disk = res.get("disk", {}).get("mibs")
    repl = res.get("repl")
    L.append("| measurement | result | notes |")
    L.append("|---|---:|---|")
    L.append(f"| 1a. loopback TCP (iperf3, 1 stream) | {mibs(tcp) if tcp else 'n/a'} | "
             f"{args.baseline_runtime} s |")
    L.append(f"| 1b. disk seq write (fio libaio, O_DIRECT, 1 MiB, qd 8) | {mibs(disk) if disk else 'n/a'} | "
             f"{args.baseline_runtime} s, file in the test dir |")
    if repl:
        f = repl["fio"]
        L.append(f"| 2a. datatap ingest (fio nbd, 1 MiB, qd 8) | {mibs(f['mibs'])} | "
                 f"{f['bytes'] / MIB:.0f} MiB in {f['secs']:.2f} s (fio's figure), p99 "
                 f"{f['p99_ms']:.1f} ms |" if f["p99_ms"] is not None else
                 f"| 2a. datatap ingest (fio nbd, 1 MiB, qd 8) | {mibs(f['mibs'])} | |")
        L.append(f"| 2b. **replication** (start → recovery applied_seq = journal_seq) | **{mibs(repl['mibs'])}** | "
                 f"{f['bytes'] / MIB:.0f} MiB in {repl['wall']:.2f} s; recovery finished "
                 f"{repl['tail']:.2f} s after fio; {repl['seq']} records |")
        L.append(f"| replication / TCP | {ratio(repl['mibs'], tcp)} | |")
        L.append(f"| replication / disk write | {ratio(repl['mibs'], disk)} | |")
        L.append(f"| ingest / disk write | {ratio(f['mibs'], disk)} | |")
    else:
        L.append("| 2. replication | n/a | see below |")
    L.append("")
    if res.get("lag"):
        L.append(f"Steady-state lag ({args.runtime} s per row, production status sampled every "
                 f"{POLL * 1000:.0f} ms, first second skipped; backlog = journal_seq − target applied_seq, "
                 f"bytes ≈ records × 1 MiB; lag = backlog bytes / achieved write rate):")
        L.append("")
        L.append("| load | fio --rate | achieved | backlog mean | backlog max | not yet sent (mean) | "
                 "lag mean | lag max | drain after stop | samples |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for lg in res["lag"]:
            drain = f"{lg['drain']:.2f} s"
            L.append(f"| {lg['pct']}% of ingest | {lg['rate']} MiB/s | {mibs(lg['fio']['mibs'])} | "
                     f"{lg['mean_rec']:.1f} rec ({lg['mean_mib']:.0f} MiB) | {lg['max_rec']} rec "
                     f"({lg['max_mib']:.0f} MiB) | {lg['mean_unsent']:.1f} rec | {lg['mean_lag']:.2f} s | "
                     f"{lg['max_lag']:.2f} s | {drain} | {lg['samples']} |")
        L.append("")
    L.append("Timing resolution: the status files are rewritten every 200 ms and their mtime is taken "
             "as the time of the figures in them, so the replication time is late by up to ~0.2 s.")
    for e in errors:
        L.append("")
        L.append(f"error: {e}")
    for n in notes:
        L.append("")
        L.append(f"note (seen in the status files): {n}")
    text = "\n".join(L) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
        log(f"wrote {args.out}")
    hard = [e for e in errors if not e.startswith("redoubt: ") and not e.startswith("iperf3 not installed")]
    return 1 if hard else 0


if __name__ == "__main__":
    sys.exit(main())
