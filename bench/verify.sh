#!/usr/bin/env bash
# Online verify vs reading the data once. On `redoubt lab` (prod-a -> dr-b, dr-c; group erp,
# lv_data01 256 MiB + lv_logs 64 MiB on every server, all on this disk) the LVs are filled
# with random data through production's exports; then, page cache dropped before each:
#   1. `redoubt verify erp`: every server hashes its LVs as of one seq (3 x 320 MiB read),
#   2. `dd` of the same LV files of all three servers once (the same 3 x 320 MiB),
#   3. `dd` of production's LV files once (320 MiB).
# Writes bench/results/verify-latest.md. Loopback only; the lab is stopped and removed.
#
#   bench/verify.sh [--dir /var/tmp] [--redoubt-bin target/release/redoubt]
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
out=bench/results/verify-latest.md
work=$(mktemp -d "$base/redoubt-verify-bench-XXXXXX")
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
for lv in lv_data01 lv_logs; do
  fio --name=fill --ioengine=nbd --uri="$nbd/$lv" --rw=write --bs=1M --iodepth=8 \
      --refill_buffers=1 --output=/dev/null
done

# Wait until both recovery servers applied everything production journaled.
deadline=$((SECONDS + 300))
until "$bin" status erp --format json | python3 -c '
import json, sys
targets = json.load(sys.stdin)["groups"][0]["targets"]
sys.exit(0 if all(t["applied_seq"] is not None and t["applied_seq"] == t["journal_seq"] for t in targets) else 1)'; do
  [ $SECONDS -lt $deadline ] || { echo "replicas never caught up" >&2; exit 1; }
  sleep 0.2
done

drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; cache=dropped; else cache=warm; fi
}
now() { date +%s.%N; }
read_once() { for f in "$@"; do dd if="$f" of=/dev/null bs=1M status=none; done; }

files_all=()
for server in prod-a dr-b dr-c; do
  for lv in lv_data01 lv_logs; do files_all+=("$lab/data/$server/groups/erp/replication/$lv"); done
done
files_prod=("${files_all[@]:0:2}")
bytes_prod=$(cat "${files_prod[@]}" | wc -c)

drop_caches
t0=$(now)
"$bin" verify erp --format json > "$work/verify.json"
t1=$(now)
drop_caches
t2=$(now)
read_once "${files_all[@]}"
t3=$(now)
drop_caches
t4=$(now)
read_once "${files_prod[@]}"
t5=$(now)

python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$bytes_prod" "$work/verify.json" "$out" "$cache" "$base" <<'EOF'
import json, os, sys, time
t0, t1, t2, t3, t4, t5 = map(float, sys.argv[1:7])
bytes_prod = int(sys.argv[7])
result = json.load(open(sys.argv[8]))
out, cache, base = sys.argv[9], sys.argv[10], sys.argv[11]
verify_s, all_s, prod_s = t1 - t0, t3 - t2, t5 - t4
mib = bytes_prod / (1 << 20)
servers = len(result["servers"])
report = "\n".join([
    f"# Verify benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
    "",
    "```",
    "bench/verify.sh",
    "```",
    "",
    f"- machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; files under {base}; page cache {cache} before each run",
    f"- data: `redoubt lab`, group erp: {mib:.0f} MiB of fio-random data in 2 LVs, on {servers} servers (production and two replicas) on the same disk",
    f"- verify: `redoubt verify erp` (1 MiB regions, BLAKE3-128, every server hashes its copy as of seq {result['seq']}; {result['differences_total']} differences)",
    "- baselines: `dd bs=1M` of the same LV files once",
    "",
    "| what | bytes read | time | MiB/s | verify vs this |",
    "|---|---:|---:|---:|---:|",
    f"| `redoubt verify erp` | {servers} x {mib:.0f} MiB | {verify_s:.2f} s | {servers * mib / verify_s:.0f} | 1.00x |",
    f"| `dd` of all {servers} servers' LV files | {servers} x {mib:.0f} MiB | {all_s:.2f} s | {servers * mib / all_s:.0f} | {all_s / verify_s:.2f}x |",
    f"| `dd` of production's LV files | {mib:.0f} MiB | {prod_s:.2f} s | {mib / prod_s:.0f} | {prod_s / verify_s:.2f}x |",
    "",
    "\"verify vs this\" is the baseline's time over verify's: 1.00x means verify takes as long as reading the data once.",
    "",
])
print(report)
os.makedirs(os.path.dirname(out), exist_ok=True)
open(out, "w").write(report)
EOF
