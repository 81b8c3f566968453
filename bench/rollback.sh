#!/usr/bin/env bash
# Rollback vs reading the data once. On `redoubt lab` (prod-a -> dr-b, dr-c; group erp,
# lv_data01 256 MiB + lv_logs 64 MiB): a marker, then both LVs filled with random data
# through production's exports (320 MiB of writes that dr-b's undo journal can undo); then,
# page cache dropped before each:
#   1. `redoubt rollback erp -s dr-b --to mark:before-fill`: undo 320 MiB newest first
#      (each record's bytes are captured into the roll-forward file before they go back),
#   2. `redoubt resume erp -s dr-b`: redo the same 320 MiB from the roll-forward file,
#   3. `dd` of dr-b's LV files once (320 MiB).
# Writes bench/results/rollback-latest.md. Loopback only; the lab is stopped and removed.
#
#   bench/rollback.sh [--dir /var/tmp] [--redoubt-bin target/release/redoubt]
set -euo pipefail
cd "$(dirname "$0")/.."
base=/var/tmp
bin=target/release/redoubt
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) base=$2; shift 2 ;;
    --redoubt-bin) bin=$2; shift 2 ;;
    --quick) shift ;;  # already small: accepted for bench/all.sh
    *) echo "usage: $0 [--dir DIR] [--redoubt-bin PATH]" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || cargo build --release --locked --quiet -p redoubt
bin=$(realpath "$bin")
out=bench/results/rollback-latest.md
work=$(mktemp -d "$base/redoubt-rollback-bench-XXXXXX")
lab="$work/lab"
cleanup() {
  "$bin" lab down --dir "$lab" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" lab up --dir "$lab" > "$work/up.log" 2>&1 || { cat "$work/up.log"; exit 1; }
set -a; . "$lab/lab.env"; set +a
nbd=$(grep -o 'nbd://[^ ]*/lv_data01' "$work/up.log" | head -1)
nbd=${nbd%/lv_data01}
# Both recovery servers applied everything production journaled (the initial sync included:
# its zeroing records are undo barriers, so the marker must come after them).
caught_up() {
  local deadline=$((SECONDS + 300))
  until "$bin" status erp --format json | python3 -c '
import json, sys
targets = json.load(sys.stdin)["groups"][0]["targets"]
sys.exit(0 if all(t["applied_seq"] is not None and t["applied_seq"] == t["journal_seq"] and t["super_transaction_pct"] >= 100 for t in targets) else 1)'; do
    [ $SECONDS -lt $deadline ] || { echo "replicas never caught up" >&2; exit 1; }
    sleep 0.2
  done
}
caught_up
"$bin" mark erp before-fill > /dev/null
for lv in lv_data01 lv_logs; do
  fio --name=fill --ioengine=nbd --uri="$nbd/$lv" --rw=write --bs=1M --iodepth=8 \
      --refill_buffers=1 --output=/dev/null
done
caught_up
drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; cache=dropped; else cache=warm; fi
}
now() { date +%s.%N; }
files=("$lab/data/dr-b/groups/erp/replication/lv_data01" "$lab/data/dr-b/groups/erp/replication/lv_logs")
bytes=$(cat "${files[@]}" | wc -c)

drop_caches
t0=$(now)
"$bin" rollback erp -s dr-b --to mark:before-fill --yes --format json > "$work/rollback.json" 2> "$work/rollback.err" || { cat "$work/rollback.err" "$work/rollback.json" >&2; exit 1; }
t1=$(now)
drop_caches
t2=$(now)
"$bin" resume erp -s dr-b --format json > "$work/resume.json"
t3=$(now)
drop_caches
t4=$(now)
for f in "${files[@]}"; do dd if="$f" of=/dev/null bs=1M status=none; done
t5=$(now)

python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$bytes" "$work/rollback.json" "$out" "$cache" "$base" <<'PY'
import json, os, sys, time
t0, t1, t2, t3, t4, t5 = map(float, sys.argv[1:7])
data_bytes = int(sys.argv[7])
result = json.load(open(sys.argv[8]))
out, cache, base = sys.argv[9], sys.argv[10], sys.argv[11]
rollback_s, resume_s, read_s = t1 - t0, t3 - t2, t5 - t4
mib = data_bytes / (1 << 20)
report = "\n".join([
    f"# Rollback benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
    "",
    "```",
    "bench/rollback.sh",
    "```",
    "",
    f"- machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; files under {base}; page cache {cache} before each run",
    f"- data: `redoubt lab`, group erp: a marker, then {mib:.0f} MiB of fio-random writes (1 MiB each) in 2 LVs, replicated to dr-b",
    f"- rollback: `redoubt rollback erp -s dr-b --to mark:before-fill` undid {result.get('undone_records', '?')} records (seq {result.get('from_seq', '?')} -> {result.get('to_seq', '?')}); resume redid them",
    "- baseline: `dd bs=1M` of dr-b's LV files once",
    "",
    "| what | data | time | MiB/s | vs reading once |",
    "|---|---:|---:|---:|---:|",
    f"| `redoubt rollback` (undo, capturing redo) | {mib:.0f} MiB | {rollback_s:.2f} s | {mib / rollback_s:.0f} | {read_s / rollback_s:.2f}x |",
    f"| `redoubt resume` (redo from the roll-forward file) | {mib:.0f} MiB | {resume_s:.2f} s | {mib / resume_s:.0f} | {read_s / resume_s:.2f}x |",
    f"| `dd` of the replica's LV files | {mib:.0f} MiB | {read_s:.2f} s | {mib / read_s:.0f} | 1.00x |",
    "",
    "\"vs reading once\" is the read's time over the operation's: 1.00x means as fast as reading the data once.",
    "A rollback reads the undo records and the replica's current bytes and writes both the replica and the roll-forward file, so about 4x the I/O of one read.",
    "",
])
print(report)
os.makedirs(os.path.dirname(out), exist_ok=True)
open(out, "w").write(report)
PY
