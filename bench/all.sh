#!/usr/bin/env bash
# Every benchmark in one run: the datatap vs qemu-nbd and nbdkit, replication vs loopback TCP
# and the disk (with lag at 50% and 90% of the write rate), the initial sync vs nbdcopy, and
# online verify and rollback vs reading the data once, and sync mode vs async mode on the lab.
# Writes bench/results/all-latest.md (the three reports one after the other). Pass --quick
# for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p redoubt
quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); fi
bash bench/nbd.sh "${quick[@]}"
bash bench/replication.sh "${quick[@]}"
if [ ${#quick[@]} -gt 0 ]; then
  bash bench/initial_sync.sh --size 256MiB
else
  bash bench/initial_sync.sh
fi
bash bench/verify.sh "${quick[@]}"
bash bench/rollback.sh "${quick[@]}"
bash bench/sync.sh "${quick[@]}"
{
  echo "# All benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  for report in nbd replication initial-sync verify rollback sync; do
    sed 's/^# /## /' "bench/results/${report}-latest.md"
    echo
  done
} > bench/results/all-latest.md
echo "wrote bench/results/all-latest.md"
