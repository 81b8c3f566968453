#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, checks formatting and
# lints, fuzzes every parser briefly, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo fmt --all -- --check
# --locked everywhere: a stale Cargo.lock fails loudly instead of being rewritten quietly.
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
bash scripts/fuzz.sh "${REDOUBT_FUZZ_SECONDS:-15}"
cargo build --workspace --release --locked --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary, doc tests last).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
