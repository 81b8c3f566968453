#!/usr/bin/env bash
# Side-by-side NBD benchmark: qemu-nbd (baseline) vs nbdkit file vs redoubt datatap, alone and
# replicating to a recovery server on this machine; medians of interleaved rounds (--rounds, default 3).
# All logic lives in nbd.py (python3, stdlib only); see bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export NBD_BENCH_ARGV0="bench/nbd.sh"
exec python3 "$here/nbd.py" "$@"
