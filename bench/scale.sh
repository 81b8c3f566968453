#!/usr/bin/env bash
# Scale of one console: plan time of a 1000-LV group (dry run), initialization wall time of
# 200 groups (one 1 MiB LV each) on 12 agents, status latency over the 200 groups (median of
# 5 once initialized, and during the initialization). Daemons are processes on loopback; the
# figures come from crates/redoubt/tests/scale.rs.
# Usage: bash bench/scale.sh [--groups N] [--agents N] [--plan-lvs N]
# Writes bench/results/scale-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
groups=200 agents=12 plan_lvs=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --groups) groups="$2"; shift 2 ;;
    --agents) agents="$2"; shift 2 ;;
    --plan-lvs) plan_lvs="$2"; shift 2 ;;
    *) echo "usage: bench/scale.sh [--groups N] [--agents N] [--plan-lvs N]" >&2; exit 2 ;;
  esac
done
bash scripts/deps.sh
mkdir -p bench/results
runs=3
lines=()
for run in $(seq 1 "$runs"); do
  line=$(SCALE_GROUPS="$groups" SCALE_AGENTS="$agents" SCALE_PLAN_LVS="$plan_lvs" \
    cargo test --release --quiet -p redoubt --test scale -- --nocapture 2>/dev/null | grep '^SCALE ')
  echo "run $run: $line"
  lines+=("$line")
done
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$2"; }
{
  echo "# Scale of one console ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "$groups groups (one 1 MiB LV each) on $agents agents, processes on loopback, $(nproc) cores;"
  echo "plan of one $plan_lvs-LV group. $runs runs: \`bash bench/scale.sh\`."
  echo
  echo "| run | plan, $plan_lvs LVs (ms) | apply (ms) | init wall time, $groups groups (ms) | status, $groups groups (ms, median) | status during init (ms, median) |"
  echo "|---|---|---|---|---|---|"
  n=0
  for line in "${lines[@]}"; do
    n=$((n + 1))
    echo "| $n | $(field plan_ms "$line") | $(field apply_ms "$line") | $(field init_wall_ms "$line") | $(field status_ms_median "$line") | $(field status_ms_during_init_median "$line") |"
  done
} > bench/results/scale-latest.md
cat bench/results/scale-latest.md
