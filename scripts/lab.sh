#!/usr/bin/env bash
# The main job: build Redoubt and start the local lab — a console and three agents
# (prod-a, dr-b, dr-c) on loopback with file-backed containers under ./redoubt-lab —
# then initialize the example group with live progress and print the NBD URIs.
# Stop it with: target/release/redoubt lab down --dir redoubt-lab [--purge]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked --quiet -p redoubt
dir="${1:-redoubt-lab}"
if [ -d "$dir/pids" ] && [ -n "$(ls -A "$dir/pids" 2>/dev/null)" ]; then
  echo "A lab already runs in $dir; restarting it."
  target/release/redoubt lab down --dir "$dir"
fi
target/release/redoubt lab up --dir "$dir"
