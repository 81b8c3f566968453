#!/usr/bin/env bash
# Replication throughput and lag (datatap -> apply over 127.0.0.1) vs. iperf3 and disk baselines.
# All logic lives in replication.py (python3, stdlib only); see bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export REPL_BENCH_ARGV0="bench/replication.sh"
exec python3 "$here/replication.py" "$@"
