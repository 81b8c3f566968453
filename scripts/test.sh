#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, checks formatting and
# lints, fuzzes every parser briefly, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
bash scripts/fuzz.sh "${REDOUBT_FUZZ_SECONDS:-15}"
cargo build --workspace --release --quiet
cargo test --workspace --release
