#!/usr/bin/env python3
"""Side-by-side NBD write/read benchmark (python3 stdlib only).

Serves a fresh volume through each NBD server under test, one after another, on
the same disk, drives each with fio's nbd engine, and repeats that for several
interleaved rounds (the server order rotates every round).  Prints markdown
tables of the medians over the rounds, the p99 and maximum completion
latencies, ratios against the qemu-nbd baseline (with the per-round ratio
range), and whether the datatap columns kept every completion under the
latency goal.  Run via bench/nbd.sh; see bench/README.md.
"""

import argparse
import atexit
import collections
import ctypes
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replication  # noqa: E402  (start_ready)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
EXPORT = "bench"
READY_TIMEOUT = 15.0
MIB = 1 << 20
TRANSPORT = {"unix": False}  # set from --unix
ALL_SERVERS = ("qemu-nbd", "nbdkit", "redoubt", "redoubt+repl")
RATIO_ORDER = ("redoubt", "redoubt+repl", "nbdkit")  # ratio columns, in this order
REDOUBT_COLUMNS = ("redoubt", "redoubt+repl")      # the columns the latency goal is about
BASELINE = "qemu-nbd"
REPL_GROUP = "erp"        # as in bench/replication.py
RECOVERY_NAME = "dr-b"
REPL_JOURNAL = "12GiB"    # redoubt+repl datatap --journal-capacity: a row of 10 s at ~550 MiB/s must fit while the recovery applies behind
DRAIN_STALL = 30.0        # redoubt+repl: recovery applied_seq not moving this long = stalled
DRAIN_MAX = 600.0         # redoubt+repl: longest wait for the recovery to catch up after a row

Workload = collections.namedtuple("Workload", "name short label rw bs qd jobs metric timed")

# jobs > 1: fio numjobs=N, one libnbd connection per job, group_reporting, job i on the i-th 1/N of the volume
WORKLOADS = [
    Workload("fill", "fill", "fill: seq 1 MiB write, whole volume once (untimed, informational)",
             "write", "1M", 8, 1, "bw", False),
    Workload("seqwrite", "a", "a. seq 1 MiB write, qd 8", "write", "1M", 8, 1, "bw", True),
    Workload("randwrite", "b", "b. rand 4 KiB write, qd 16", "randwrite", "4k", 16, 1, "iops", True),
    Workload("randread", "c", "c. rand 4 KiB read, qd 16", "randread", "4k", 16, 1, "iops", True),
    Workload("seqwrite4", "d", "d. seq 1 MiB write, qd 8, 4 connections (qd 8 each)",
             "write", "1M", 8, 4, "bw", True),
    Workload("randwrite4", "e", "e. rand 4 KiB write, qd 16, 4 connections (qd 16 each)",
             "randwrite", "4k", 16, 4, "iops", True),
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
        else:
            if p.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
                note = f"exited with status {p.returncode} after SIGTERM"
    else:
        note = f"had already exited with status {p.returncode}"
    if p in _children:
        _children.remove(p)
    return note


def stop_all():
    for p in reversed(list(_children)):
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


def start_ready(cmd, logpath, what):
    """Start a redoubt process, wait for its `ready ...` stdout line; returns (p, line)."""
    return replication.start_ready(cmd, logpath, what=what, spawn_fn=spawn)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def q(cmd):
    return " ".join(shlex.quote(c) for c in cmd)


# ---------------------------------------------------------------- servers

class Running:
    """One started server: its processes (label, Popen, stderr log), stopped in list order."""

    def __init__(self, procs, uri):
        self.procs = procs
        self.uri = uri

    def dead(self):
        return [f"{label} exited with status {p.returncode}" for label, p, _ in self.procs if p.poll() is not None]

    def describe(self):
        out = []
        for label, p, logpath in self.procs:
            alive = "still running" if p.poll() is None else f"had exited with status {p.returncode}"
            out.append(f"{label} {alive}; stderr: {tail(logpath, 6)}")
        return "; ".join(out)

    def after_workload(self, wl):
        """Called after each fio run; returns a short note or None."""
        return None

    def stop(self):
        notes = []
        for label, p, _ in self.procs:
            n = stop(p)
            if n:
                notes.append(f"{label}: {n}")
        return notes

    def stderr_lines(self):
        """Non-empty server stderr, for the report's notes."""
        out = []
        for label, _, logpath in self.procs:
            try:
                with open(logpath, errors="replace") as f:
                    lines = [ln.rstrip() for ln in f if ln.strip()]
            except OSError:
                continue
            if lines:
                out.append((label, lines))
        return out


class Server:
    name = "?"
    unavailable = None  # reason string if it cannot run on this machine
    note = None         # something to print under the table

    def shown(self, unix):
        """[(label, command line)] for the report header, with placeholders."""
        raise NotImplementedError

    def start(self, workdir, size, port):
        raise NotImplementedError


class FileServer(Server):
    """qemu-nbd / nbdkit: serve a preallocated raw file."""

    def cmdline(self, path, port):
        raise NotImplementedError

    def shown(self, unix):
        return [(self.name, q(self.cmdline("FILE", "SOCKET" if unix else "PORT")))]

    def start(self, workdir, size, port):
        path = os.path.join(workdir, "vol.img")
        make_file(path, size)
        logpath = os.path.join(workdir, "server.log")
        lf = open(logpath, "w")
        p = spawn(self.cmdline(path, port), lf, lf)
        lf.close()
        run = Running([(self.name, p, logpath)], nbd_uri(port))
        try:
            wait_nbd(p, run.uri, time.monotonic() + READY_TIMEOUT, logpath)
        except RuntimeError:
            run.stop()
            raise
        return run


class QemuNbd(FileServer):
    name = "qemu-nbd"

    def __init__(self):
        if not shutil.which("qemu-nbd"):
            self.unavailable = "qemu-nbd not installed"

    def cmdline(self, path, port):
        where = ["-k", port] if TRANSPORT["unix"] else ["-b", "127.0.0.1", "-p", str(port)]
        return ["qemu-nbd", "--cache=none", "--aio=native", "--format=raw", "--persistent",
                "--shared=8"] + where + ["-x", EXPORT, path]


class Nbdkit(FileServer):
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


def check_redoubt(binpath, subcommands):
    if not (os.path.isfile(binpath) and os.access(binpath, os.X_OK)):
        return "not built (run cargo build --release)"
    for sub in subcommands:
        try:
            h = subprocess.run([binpath, sub, "--help"], capture_output=True, text=True, timeout=10)
            ok = h.returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            ok = False
        if not ok:
            return f"not built (run cargo build --release) - binary has no `{sub}` subcommand yet"
    return None


class Redoubt(Server):
    name = "redoubt"

    def __init__(self, binpath, size, extra=()):
        self.size_arg = size_str(size)
        self.extra = list(extra)
        self.bin = binpath if os.path.isabs(binpath) else os.path.join(REPO_ROOT, binpath)
        self.unavailable = check_redoubt(self.bin, ["datatap"])

    def listen(self, port):
        return f"unix:{port}" if TRANSPORT["unix"] else f"127.0.0.1:{port}"

    def cmdline(self, path, port):
        return [self.bin, "datatap", "--dir", path, "--volume", f"{EXPORT}:{self.size_arg}",
                "--listen", self.listen(port)] + self.extra

    def shown(self, unix):
        return [(self.name, q(self.cmdline("DIR", "SOCKET" if unix else "PORT")))]

    def start(self, workdir, size, port):
        store = os.path.join(workdir, "store")
        os.mkdir(store)
        logpath = os.path.join(workdir, "server.log")
        p, _line = start_ready(self.cmdline(store, port), logpath, "datatap")
        run = Running([(self.name, p, logpath)], nbd_uri(port))
        try:
            got = wait_nbd(p, run.uri, time.monotonic() + READY_TIMEOUT, logpath)
            if got != size:
                raise RuntimeError(f"export size {got} != requested {size}")
        except RuntimeError:
            run.stop()
            raise
        return run


class StatusPoller:
    """Reads the datatap's and the apply's status files every 200 ms; keeps the flags it sees."""

    def __init__(self, prod_path, rec_path):
        self.prod_path, self.rec_path = prod_path, rec_path
        self.flags = set()
        self.was_connected = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            prod = read_json(self.prod_path) or {}
            rec = read_json(self.rec_path) or {}
            if prod.get("sync_degraded"):
                self.flags.add("production sync_degraded")
            if prod.get("needs_resync"):
                self.flags.add("production needs_resync")
            if rec.get("needs_resync"):
                self.flags.add("recovery needs_resync")
            for t in prod.get("targets") or []:
                if t.get("connected"):
                    self.was_connected = True
                elif self.was_connected:
                    self.flags.add(f"target {t.get('server')} disconnected at some point")
                if t.get("needs_resync"):
                    self.flags.add(f"target {t.get('server')} needs_resync")
                if t.get("last_error"):
                    self.flags.add(f"target {t.get('server')} last_error: {t.get('last_error')}")
            self._stop.wait(0.2)

    def stop(self):
        self._stop.set()
        self._t.join(2)


def target0(js):
    t = (js or {}).get("targets") or []
    return t[0] if t else {}


class RunningRepl(Running):
    """After every row: note production journal_seq / recovery applied_seq, then wait until the
    recovery has applied everything (so every row starts with an empty backlog, as every row of the
    other servers starts after a sync), and note whether the datatap flagged needs_resync."""

    def __init__(self, procs, uri, prod_status, poller):
        super().__init__(procs, uri)
        self.prod_status = prod_status
        self.poller = poller
        self.rows = []         # dicts: row, seq, applied, drain (s or None), why (if not drained)
        self.degraded = False  # needs_resync seen: writes no longer (all) replicated

    def _fresh(self, after, timeout=3.0):
        """First production status document written after wall time `after` (rewritten every 200 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.stat(self.prod_status).st_mtime > after:
                    js = read_json(self.prod_status)
                    if js:
                        return js
            except OSError:
                pass
            time.sleep(0.05)
        return None

    def after_workload(self, wl):
        js = self._fresh(time.time())
        if not js:
            self.rows.append({"row": wl.short, "seq": None, "applied": None, "drain": None,
                              "why": "production status file not refreshed"})
            return
        seq, applied = js.get("journal_seq", 0), target0(js).get("applied_seq", 0)
        row = {"row": wl.short, "seq": seq, "applied": applied, "drain": None, "why": None}
        t0 = time.monotonic()
        last, last_move = applied, t0
        while True:
            if any("needs_resync" in f for f in self.poller.flags):
                self.degraded = True
            now = time.monotonic()
            cur = target0(read_json(self.prod_status)).get("applied_seq", last)
            if cur >= seq:
                row["drain"] = now - t0
                break
            if cur != last:
                last, last_move = cur, now
            dead = self.dead()
            if dead:
                row["why"] = "; ".join(dead)
                break
            if now - last_move > DRAIN_STALL:
                row["why"] = f"recovery applied_seq stuck at {last} for {DRAIN_STALL:.0f} s"
                break
            if now - t0 > DRAIN_MAX:
                row["why"] = f"not caught up after {DRAIN_MAX:.0f} s (applied_seq {last})"
                break
            time.sleep(0.1)
        if any("needs_resync" in f for f in self.poller.flags):
            self.degraded = True
        row["resync"] = self.degraded
        self.rows.append(row)

    def stop(self):
        notes = super().stop()
        self.poller.stop()
        return notes


class RedoubtRepl(Redoubt):
    """The datatap replicating (async) to one `redoubt apply` on 127.0.0.1, command lines as bench/replication.py."""
    name = "redoubt+repl"

    def __init__(self, binpath, size, extra=(), repl_extra=(), apply_extra=()):
        super().__init__(binpath, size, extra)
        self.repl_extra = list(repl_extra)
        self.apply_extra = list(apply_extra)
        given = any(a == "--journal-capacity" or a.startswith("--journal-capacity=")
                    for a in self.extra + self.repl_extra)
        self.journal = [] if given else ["--journal-capacity", REPL_JOURNAL]
        if not self.unavailable:
            self.unavailable = check_redoubt(self.bin, ["apply"])

    def apply_cmd(self, d2, aport):
        return [self.bin, "apply", "--dir", d2, "--group", REPL_GROUP, "--name", RECOVERY_NAME,
                "--listen", f"127.0.0.1:{aport}", "--volume", f"{EXPORT}:{self.size_arg}",
                "--status-file", os.path.join(d2, "status.json")] + self.apply_extra

    def tap_cmd(self, d1, port, aport):
        return [self.bin, "datatap", "--dir", d1, "--group", REPL_GROUP, "--volume", f"{EXPORT}:{self.size_arg}",
                "--listen", self.listen(port), "--target", f"{RECOVERY_NAME}=127.0.0.1:{aport}",
                "--compression", "none", "--status-file", os.path.join(d1, "status.json")] + \
            self.journal + self.extra + self.repl_extra

    def shown(self, unix):
        return [(f"{self.name} (recovery)", q(self.apply_cmd("DIR2", "PORT2"))),
                (f"{self.name} (production)", q(self.tap_cmd("DIR", "SOCKET" if unix else "PORT", "PORT2")))]

    def start(self, workdir, size, port):
        d1, d2 = os.path.join(workdir, "prod-a"), os.path.join(workdir, "dr-b")
        os.mkdir(d1)
        os.mkdir(d2)
        aport = free_port()
        alog, tlog = os.path.join(workdir, "apply.log"), os.path.join(workdir, "server.log")
        procs = []
        poller = None
        try:
            pa, _ = start_ready(self.apply_cmd(d2, aport), alog, "apply")
            procs.append(("datatap", None, tlog))  # placeholder keeps the stop order: datatap first
            procs.append(("apply", pa, alog))
            pt, _ = start_ready(self.tap_cmd(d1, port, aport), tlog, "datatap")
            procs[0] = ("datatap", pt, tlog)
            uri = nbd_uri(port)
            got = wait_nbd(pt, uri, time.monotonic() + READY_TIMEOUT, tlog)
            if got != size:
                raise RuntimeError(f"export size {got} != requested {size}")
            prod_status = os.path.join(d1, "status.json")
            poller = StatusPoller(prod_status, os.path.join(d2, "status.json"))
            deadline = time.monotonic() + READY_TIMEOUT
            while not poller.was_connected:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"datatap not connected to the recovery server within {READY_TIMEOUT:.0f}s; "
                                       f"production status {read_json(prod_status)}")
                for label, p, lp in procs:
                    if p is not None and p.poll() is not None:
                        raise RuntimeError(f"{label} exited with status {p.returncode}; stderr: {tail(lp)}")
                time.sleep(0.1)
            return RunningRepl(procs, uri, prod_status, poller)
        except RuntimeError:
            if poller is not None:
                poller.stop()
            for _, p, _ in procs:
                if p is not None:
                    stop(p)
            raise


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


PREALLOC = {"how": None}  # how the baseline files were preallocated (for the report)


def make_file(path, size):
    """A fully allocated raw file: fallocate(1), or written out with zeros where that is unsupported."""
    r = subprocess.run(["fallocate", "-l", str(size), path], capture_output=True, text=True)
    if r.returncode == 0:
        PREALLOC["how"] = PREALLOC["how"] or "`fallocate -l SIZE FILE`"
        return
    log(f"fallocate failed ({r.stderr.strip()}); writing {path} out with zeros instead")
    chunk = b"\0" * (8 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    PREALLOC["how"] = "written out with zeros (fallocate unsupported here)"


def run_fio(uri, wl, runtime, outdir, tag, size, max_lat_ms):
    out = os.path.join(outdir, f"{tag}-{wl.name}.json")
    cmd = ["fio", f"--name={tag}-{wl.name}", "--ioengine=nbd", f"--uri={uri}", f"--rw={wl.rw}",
           f"--bs={wl.bs}", f"--iodepth={wl.qd}", f"--numjobs={wl.jobs}"]
    if wl.jobs > 1:
        part = size // wl.jobs // MIB * MIB
        if part == 0:
            raise RuntimeError(f"volume too small for {wl.jobs} jobs of at least 1 MiB each")
        cmd += ["--group_reporting", f"--size={part}", f"--offset_increment={part}"]
    if wl.timed:
        cmd += [f"--runtime={runtime}", "--time_based"]
        timeout = runtime + 120
    else:
        cmd += ["--size=100%"]
        timeout = 900
    cmd += ["--output-format=json+", f"--output={out}"]
    os.sync()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, preexec_fn=_pdeathsig)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise RuntimeError(f"fio did not finish within {timeout}s (server stalled?); killed")
    try:
        with open(out) as f:
            text = f.read()
        # fio may print warnings before the JSON object
        data = json.loads(text[text.index("{"):])
        job = data["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        raise RuntimeError(f"fio failed (rc {p.returncode}): {(stderr or stdout).strip()[-300:]}")
    d = job["read" if "read" in wl.rw else "write"]
    if job.get("error") or p.returncode != 0 or d["io_bytes"] == 0:
        raise RuntimeError(f"fio error {job.get('error')} rc {p.returncode}: {stderr.strip()[-300:]}")
    clat = d["clat_ns"]
    p99 = clat.get("percentile", {}).get("99.000000")
    limit_ns = max_lat_ms * 1e6
    bins = clat.get("bins")
    over = sum(c for k, c in bins.items() if int(k) > limit_ns) if bins is not None else None
    return {
        "iops": d["iops"],
        "mibs": d["bw_bytes"] / MIB,
        "p99_ms": p99 / 1e6 if p99 is not None else None,
        "max_ms": clat["max"] / 1e6,
        "over": over,
        "n": d.get("total_ios") or clat.get("N") or 0,
        "io_mib": d["io_bytes"] / MIB,
        "secs": job.get("job_runtime", 0) / 1000.0,
        "cmd": cmd,
    }


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


loadavg = replication.loadavg


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
        "git": sh(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]),
    }


def value(res, metric):
    return res["mibs"] if metric == "bw" else res["iops"]


def fmt_value(v, metric):
    return f"{v:.0f} MiB/s" if metric == "bw" else f"{v:.0f} IOPS"


def fmt_ms(v):
    if v is None:
        return "-"
    if v < 10:
        return f"{v:.2f} ms"
    if v < 100:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms"


def fmt_count(n):
    return f"{n:,}".replace(",", " ")


def fmt_dur(secs):
    m, s = divmod(int(round(secs)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(
        prog=os.environ.get("NBD_BENCH_ARGV0", "nbd.py"),
        description="Side-by-side NBD benchmark: qemu-nbd (baseline), nbdkit file, redoubt datatap, "
                    "and the datatap replicating to a recovery server on this machine; interleaved rounds.")
    ap.add_argument("--dir", default=os.environ.get("NBD_BENCH_DIR", "/var/tmp"),
                    help="parent dir for the temporary test files (default /var/tmp; env NBD_BENCH_DIR)")
    ap.add_argument("--runtime", type=int, default=int(os.environ.get("NBD_BENCH_RUNTIME", "10")),
                    help="seconds per timed workload (default 10; env NBD_BENCH_RUNTIME)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds; every server runs every workload once per round, the "
                         "server order rotates each round (default 3, --quick 1; env NBD_BENCH_ROUNDS)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s per workload, 1 round unless --rounds")
    ap.add_argument("--size", type=parse_size, default=parse_size(os.environ.get("NBD_BENCH_SIZE", "1GiB")),
                    help="volume size (default 1GiB; env NBD_BENCH_SIZE)")
    ap.add_argument("--servers", default=os.environ.get("NBD_BENCH_SERVERS", ",".join(ALL_SERVERS)),
                    help=f"comma list from {','.join(ALL_SERVERS)} (default all; env NBD_BENCH_SERVERS)")
    ap.add_argument("--max-latency-ms", type=float,
                    default=float(os.environ.get("NBD_BENCH_MAX_LATENCY_MS", "50")),
                    help="latency goal: no single completion of a redoubt column over this (default 50; "
                         "env NBD_BENCH_MAX_LATENCY_MS)")
    ap.add_argument("--redoubt-bin", default=os.environ.get("REDOUBT_BIN", "target/release/redoubt"),
                    help="redoubt binary, relative to the repo root (default target/release/redoubt; env REDOUBT_BIN)")
    ap.add_argument("--redoubt-args", default=os.environ.get("REDOUBT_ARGS", ""),
                    help="extra datatap arguments for both redoubt columns, shell-quoted, e.g. "
                         "'--journal-capacity 8GiB' (env REDOUBT_ARGS)")
    ap.add_argument("--repl-args", default=os.environ.get("NBD_BENCH_REPL_ARGS", ""),
                    help="extra datatap arguments for the redoubt+repl column only, e.g. '--mode sync' "
                         "(env NBD_BENCH_REPL_ARGS)")
    ap.add_argument("--apply-args", default=os.environ.get("NBD_BENCH_APPLY_ARGS", ""),
                    help="extra arguments for the recovery server's `redoubt apply`, e.g. "
                         "'--journal-capacity 4GiB' (env NBD_BENCH_APPLY_ARGS)")
    ap.add_argument("--unix", action="store_true", default=os.environ.get("NBD_BENCH_UNIX") == "1",
                    help="serve over unix sockets instead of TCP 127.0.0.1 (env NBD_BENCH_UNIX=1); "
                         "the datatap -> apply link stays TCP")
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "nbd-latest.md"),
                    help="where to write the markdown (default bench/results/nbd-latest.md; '-' = stdout only)")
    args = ap.parse_args()
    TRANSPORT["unix"] = args.unix
    if args.quick:
        args.runtime = 3
    if args.rounds is None:
        env_rounds = os.environ.get("NBD_BENCH_ROUNDS")
        args.rounds = int(env_rounds) if env_rounds else (1 if args.quick else 3)
    if args.runtime < 1:
        ap.error("--runtime must be >= 1")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in wanted:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; choose from {','.join(ALL_SERVERS)}")
    wanted = [s for s in ALL_SERVERS if s in wanted]  # fixed column order
    for tool in ("fio", "nbdinfo", "fallocate"):
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
    need = 5 * args.size + (2 << 30) if "redoubt+repl" in wanted else 2 * args.size + (1 << 30)
    if free < need:
        log(f"warning: only {free >> 20} MiB free in {args.dir}; about {need >> 20} MiB may be needed "
            f"(volume, journal, and for redoubt+repl the replica, its journal copy and undo journal)")

    extra = shlex.split(args.redoubt_args)
    servers = {
        "qemu-nbd": QemuNbd(),
        "nbdkit": Nbdkit(),
        "redoubt": Redoubt(args.redoubt_bin, args.size, extra),
        "redoubt+repl": RedoubtRepl(args.redoubt_bin, args.size, extra,
                                    shlex.split(args.repl_args), shlex.split(args.apply_args)),
    }
    info = machine_info(tmp)
    load_start = loadavg()
    t_start = time.monotonic()
    rounds = args.rounds
    # server -> workload name -> [result or None per round]
    results = {s: {wl.name: [None] * rounds for wl in WORKLOADS} for s in wanted}
    status = {}     # server -> reason it has no figures at all (unavailable)
    failures = []   # human-readable failure lines
    notes = []
    repl_rounds = []  # (round, RunningRepl.rows, flags seen in the status files)
    stderr_seen = collections.OrderedDict()  # (server, label) -> (rounds, last lines)
    fio_cmds = {}

    runnable = []
    for name in wanted:
        srv = servers[name]
        if srv.note:
            notes.append(srv.note)
        if srv.unavailable:
            status[name] = srv.unavailable
            log(f"{name}: {srv.unavailable}")
        else:
            runnable.append(name)

    orders = []
    for r in range(rounds):
        k = r % len(runnable) if runnable else 0
        order = runnable[k:] + runnable[:k]
        orders.append(order)
        for name in order:
            srv = servers[name]
            tag = f"r{r + 1}-{name}"
            work = os.path.join(tmp, tag)
            os.mkdir(work)
            port = os.path.join(work, "nbd.sock") if args.unix else free_port()
            log(f"round {r + 1}/{rounds}: {name}: starting on {nbd_uri(port)}")
            run = None
            try:
                run = srv.start(work, args.size, port)
            except RuntimeError as e:
                failures.append(f"round {r + 1}, {name}: did not start: {e}")
                log(f"{name}: FAILED to start: {e}")
            if run is not None:
                for wl in WORKLOADS:
                    dead = run.dead()
                    if dead:
                        failures.append(f"round {r + 1}, {name}: skipped {wl.short} and later rows: "
                                        f"{'; '.join(dead)}")
                        break
                    log(f"round {r + 1}/{rounds}: {name}: {wl.name} "
                        f"({'%ds' % args.runtime if wl.timed else 'whole volume'}"
                        f"{', %d connections' % wl.jobs if wl.jobs > 1 else ''})")
                    try:
                        res = run_fio(run.uri, wl, args.runtime, work, tag, args.size, args.max_latency_ms)
                    except RuntimeError as e:
                        failures.append(f"round {r + 1}, {name}, row {wl.short}: {e} [{run.describe()}]")
                        log(f"{name}: {wl.name}: FAILED: {e}")
                        run.after_workload(wl)
                        continue
                    fio_cmds.setdefault(wl.name, res["cmd"])
                    results[name][wl.name][r] = res
                    log(f"{name}: {wl.name}: {res['mibs']:.1f} MiB/s, {res['iops']:.0f} IOPS, "
                        f"p99 {fmt_ms(res['p99_ms'])}, max {fmt_ms(res['max_ms'])}")
                    run.after_workload(wl)
                    if isinstance(run, RunningRepl):
                        st = run.rows[-1]
                        res["degraded"] = run.degraded
                        if st["drain"] is None:
                            failures.append(f"round {r + 1}, {name}, after row {wl.short}: the recovery did not "
                                            f"catch up: {st['why']}")
                        log(f"{name}: {wl.name}: journal_seq {st['seq']}, recovery applied {st['applied']} "
                            f"when fio ended; " + (f"caught up {st['drain']:.1f} s later" if st["drain"] is not None
                                                   else f"NOT caught up: {st['why']}")
                            + ("; needs_resync (journal full?)" if run.degraded else ""))
                for n in run.stop():
                    notes.append(f"round {r + 1}, {name}: {n}")
                for label, lines in run.stderr_lines():
                    key = (name, label)
                    seen_rounds, _ = stderr_seen.get(key, ([], None))
                    stderr_seen[key] = (seen_rounds + [r + 1], lines)
                if isinstance(run, RunningRepl):
                    repl_rounds.append((r + 1, run.rows, sorted(run.poller.flags)))
            shutil.rmtree(work, ignore_errors=True)
            os.sync()

    elapsed = time.monotonic() - t_start
    load_end = loadavg()

    # ------------------------------------------------------------ report
    goal = args.max_latency_ms
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = []
    L.append(f"# NBD benchmark ({now})")
    L.append("")
    L.append("```")
    L.append(argv_shown)
    L.append("```")
    L.append("")
    L.append(f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem']}, kernel {info['kernel']}, {info['os']}; "
             f"load average {load_start} at start, {load_end} at end (other work on the box skews results)")
    L.append(f"- test dir: {args.dir}, filesystem {info['fs']}")
    L.append(f"- volume: {size_str(args.size)}, fresh for every server in every round; qemu-nbd/nbdkit serve a raw file "
             f"preallocated with {PREALLOC['how'] or '`fallocate -l SIZE FILE`'}; the datatap creates its own store under "
             f"DIR (LV file made full size with set_len, not preallocated; journal segments grow as written); "
             f"every volume is filled once by a sequential pass before the timed rows")
    L.append(f"- rounds: {rounds}, interleaved: each round starts every server in turn on a fresh volume and runs every row; "
             f"order " + "; ".join(f"round {i + 1}: {', '.join(o)}" for i, o in enumerate(orders)) +
             f"; total wall time {fmt_dur(elapsed)}")
    L.append(f"- fio: {info['fio']}, ioengine=nbd over {'unix socket' if args.unix else 'TCP 127.0.0.1'}, "
             f"{args.runtime} s per timed row (time_based); rows a-c: 1 job (1 connection); rows d, e: numjobs=4, "
             f"each job its own NBD connection on its own quarter of the volume (--size=VOL/4 --offset_increment=VOL/4), "
             f"group_reporting")
    L.append(f"- versions: {info['qemu']}; nbdkit {info['nbdkit']}; repo HEAD {info['git']}")
    for name in wanted:
        srv = servers[name]
        if not srv.unavailable:
            for label, cmd in srv.shown(args.unix):
                L.append(f"- {label}: `{cmd}`")
    for wl in WORKLOADS:
        if wl.name in fio_cmds:
            c = fio_cmds[wl.name]
            c = [("--uri=URI" if a.startswith("--uri=") else "--name=JOB" if a.startswith("--name=") else a)
                 for a in c if not a.startswith("--output=")]
            L.append(f"- row {wl.short}: `{q(c)}`")
    L.append("")

    ran = list(wanted)
    others = [s for s in RATIO_ORDER if s in ran] if BASELINE in ran else []

    def vals(s, wl):
        return [r for r in results.get(s, {}).get(wl.name, []) if r]

    def cell_missing(s):
        return "not built" if s in status and status[s].startswith("not built") else "n/a"

    L.append(f"### Throughput: median of {rounds} round{'s' if rounds > 1 else ''}")
    L.append("")
    hdr = ["workload"] + ran + [f"{s} / {BASELINE}" for s in others]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    for wl in WORKLOADS:
        row = [wl.label]
        for s in ran:
            v = vals(s, wl)
            if v:
                m = statistics.median(value(x, wl.metric) for x in v)
                deg = sum(1 for x in v if x.get("degraded"))
                row.append(fmt_value(m, wl.metric) + (f" (n={len(v)})" if len(v) < rounds else "")
                           + (f" †{deg}/{len(v)}" if deg else ""))
            else:
                row.append(cell_missing(s))
        base = vals(BASELINE, wl)
        for s in others:
            v = vals(s, wl)
            if not v or not base:
                row.append("-")
                continue
            bm = statistics.median(value(x, wl.metric) for x in base)
            sm = statistics.median(value(x, wl.metric) for x in v)
            cell = f"{sm / bm:.2f}x" if bm > 0 else "-"
            per = []
            for rb, rs in zip(results[BASELINE][wl.name], results[s][wl.name]):
                if rb and rs and value(rb, wl.metric) > 0:
                    per.append(value(rs, wl.metric) / value(rb, wl.metric))
            if len(per) > 1:
                cell += f" ({min(per):.2f}–{max(per):.2f})"
            row.append(cell)
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Throughput is MiB/s for the 1 MiB rows, IOPS for the 4 KiB rows (rows d, e: all 4 connections together). "
             "Ratio = median(server) / median(qemu-nbd); >1 is faster than qemu-nbd"
             + ("; in brackets the lowest and highest per-round ratio (that round's server figure / that round's "
                "qemu-nbd figure), i.e. the noise." if rounds > 1 else ".")
             + " (n=K): only K rounds of that row succeeded."
             + (" †K/N: in K of the N rounds the replication was no longer intact by then (needs_resync, see below)."
                if any(x and x.get("degraded") for s_ in ran for wl_ in WORKLOADS
                       for x in results.get(s_, {}).get(wl_.name, [])) else ""))
    L.append("")

    L.append(f"### Completion latency (fio clat): median p99 over the rounds / max of all completions in all rounds")
    L.append("")
    hdr = ["workload"]
    for s in ran:
        hdr += [f"{s} p99", f"{s} max"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    worst = {}  # server -> list of (max_ms, row short, round, over, n) for timed rows
    for wl in WORKLOADS:
        row = [wl.label]
        for s in ran:
            v = vals(s, wl)
            p99s = [x["p99_ms"] for x in v if x["p99_ms"] is not None]
            if not v:
                row += [cell_missing(s), "-"]
                continue
            row.append(fmt_ms(statistics.median(p99s)) if p99s else "-")
            mx, mr = max((x["max_ms"], i + 1) for i, x in enumerate(results[s][wl.name]) if x)
            over = [x["over"] for x in v]
            cell = fmt_ms(mx) + (f" (r{mr})" if rounds > 1 else "")
            if mx > goal:
                cell = f"**{cell}**"
            row.append(cell)
            if wl.timed:
                worst.setdefault(s, []).append(
                    (mx, wl.short, mr, None if None in over else sum(over), sum(x["n"] for x in v)))
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append(f"p99: fio's 99th percentile completion latency of that row, median over the rounds. max: the slowest "
             f"single completion of that row in any round (rN = the round it happened in); **bold** = over the "
             f"{goal:g} ms goal.")
    L.append("")

    L.append(f"### Latency goal: no completion over {goal:g} ms (timed rows a-e)")
    L.append("")
    for s in [x for x in ran if x in REDOUBT_COLUMNS] + ([BASELINE] if BASELINE in ran else []):
        w = worst.get(s)
        label = s if s in REDOUBT_COLUMNS else f"{s} (baseline, for comparison)"
        if not w:
            L.append(f"- {label}: no figures")
            continue
        mx = max(w, key=lambda x: x[0])
        rows_over = [x for x in w if x[0] > goal]
        known = all(x[3] is not None for x in w)
        n_over = sum(x[3] for x in w) if known else None
        n_all = sum(x[4] for x in w)
        where = f"row {mx[1]}" + (f", round {mx[2]}" if rounds > 1 else "")
        if rows_over:
            cnt = (f"; about {fmt_count(n_over)} of {fmt_count(n_all)} completions "
                   f"({100.0 * n_over / n_all:.3f} %) took longer" if known and n_all else "")
            L.append(f"- {label}: **NOT met**: max {fmt_ms(mx[0])} ({where}); rows over {goal:g} ms: "
                     + ", ".join(f"{x[1]} ({fmt_ms(x[0])})" for x in rows_over) + cnt)
        else:
            L.append(f"- {label}: met: max {fmt_ms(mx[0])} ({where}), none of {fmt_count(n_all)} completions "
                     f"over {goal:g} ms")
    L.append("")
    L.append("Rows a and d keep 8 and 32 MiB in flight (qd x 1 MiB x connections): at T MiB/s the *mean* completion "
             "latency is about 8/T and 32/T s (Little's law, queues kept full), so no completion over "
             f"{goal:g} ms needs more than {8000 / goal:.0f} MiB/s on row a and {32000 / goal:.0f} MiB/s on row d.")
    L.append("")
    L.append(f"The issue's goal is stated for 60 s runs; this run had {args.runtime} s per row x {rounds} "
             f"round{'s' if rounds > 1 else ''}" + (" (use `--runtime 60` for the goal check)." if args.runtime < 60 else ".")
             + " Counts over the goal come from fio's latency histogram (json+ bins, bucket resolution a few %).")

    if rounds > 1:
        L.append("")
        L.append("### Per round (throughput, in round order)")
        L.append("")
        hdr = ["workload"] + ran
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for wl in WORKLOADS:
            row = [wl.short]
            for s in ran:
                rs = results.get(s, {}).get(wl.name, [])
                row.append(" / ".join(f"{value(x, wl.metric):.0f}" if x else "-" for x in rs) if rs else "-")
            L.append("| " + " | ".join(row) + " |")
        L.append("")
        L.append("MiB/s for rows fill, a, d; IOPS for b, c, e; `-` = that round's run failed.")

    if repl_rounds:
        L.append("")
        L.append("redoubt+repl replication after each row: production journal_seq / recovery applied_seq "
                 "when fio ended, then how long the recovery took to apply everything (the script waits for "
                 "that before the next row, so each row starts with no backlog; the datatap runs async, "
                 "acknowledging after its local journal):")
        L.append("")
        for r, rows, flags in repl_rounds:
            parts = []
            for st in rows:
                if st["seq"] is None:
                    parts.append(f"{st['row']} ? ({st['why']})")
                    continue
                tail_ = f"+{st['drain']:.1f} s" if st["drain"] is not None else f"NOT caught up: {st['why']}"
                parts.append(f"{st['row']} {st['seq']}/{st['applied']} {tail_}" + (" [needs_resync]" if st.get("resync") else ""))
            L.append(f"- round {r}: " + (", ".join(parts) if parts else "no status read")
                     + (f"; seen in the status files: {'; '.join(flags)}" if flags else ""))
        if any(st.get("resync") for _, rows, _ in repl_rounds for st in rows):
            L.append("")
            L.append("† needs_resync: the datatap's journal filled (stderr: `journal full: writing without the journal; "
                     "replicas need a resync`) in this row or an earlier row of the same round, so from then on "
                     "writes were not (all) journaled or replicated: those redoubt+repl figures are marked † in the "
                     "throughput table and are not replicated-write figures. A bigger journal: "
                     "`--repl-args='--journal-capacity 8GiB'`.")

    for s in wanted:
        if s in status:
            L.append("")
            L.append(f"{s}: {status[s]}")
    for f in failures:
        L.append("")
        L.append(f"failed: {f}")
    for (s, label), (rs, lines) in stderr_seen.items():
        L.append("")
        shown = lines[-4:]
        L.append(f"{s} ({label}) wrote to stderr in round{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}"
                 f" ({len(lines)} lines in the last one; last {len(shown)}):")
        L.append("```")
        L.extend(ln[:300] for ln in shown)
        L.append("```")
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
    log(f"total wall time {fmt_dur(elapsed)}")
    # non-zero if a server that should have run failed (not-built is not a failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
