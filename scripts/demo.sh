#!/usr/bin/env bash
# The main job, on embedded defaults: validate the shipped configuration, show the
# initialization plan of a change, then serve two protected LVs through the datatap on
# loopback, write and verify data with qemu-io, and show the exports with nbdinfo.
# Everything lives under a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --release --locked --quiet -p redoubt
redoubt=target/release/redoubt

section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

section "redoubt config validate examples/three-server.toml"
$redoubt config validate examples/three-server.toml

section "redoubt config validate examples/invalid/many-errors.toml (every error at once)"
$redoubt config validate examples/invalid/many-errors.toml || echo "(exit code $? = invalid input)"

section "redoubt config plan --from before.toml after.toml (a volume is added)"
$redoubt config plan --from examples/changes/lv-added/before.toml examples/changes/lv-added/after.toml

section "redoubt config plan for a role swap"
$redoubt config plan --from examples/changes/roles-swapped/before.toml examples/changes/roles-swapped/after.toml

section "datatap: lv_data01 and lv_logs served over NBD on 127.0.0.1"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
$redoubt datatap --dir "$work" --volume lv_data01:256MiB --volume lv_logs:64MiB \
  --listen 127.0.0.1:0 > "$work/ready" &
pid=$!
for _ in $(seq 1 100); do [ "$(grep -c '^ready' "$work/ready" 2>/dev/null)" = 2 ] && break; sleep 0.1; done
cat "$work/ready"
uri=$(sed -n 's/^ready //p' "$work/ready" | head -1)

section "qemu-io: write, flush, read back"
qemu-io -f raw -c 'write -P 0x5a 0 4M' -c flush -c 'read -P 0x5a 0 4M' "$uri"

section "nbdinfo --list"
nbdinfo --list "$uri" | grep -E 'export=|export-size|can_'

section "journal of the group (redo records, one global order)"
ls -la "$work/groups/datatap/journal"
kill -TERM "$pid"; wait "$pid" || true
echo
echo "Done. See README.md for the commands and ARCHITECTURE.md for how it fits together."
