#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly against its committed corpus.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

# The fuzz workspace has its own Cargo.lock; a stale one fails here, loudly, instead of being
# rewritten by the build below (cargo fuzz has no --locked of its own).
(cd fuzz && cargo metadata --locked --format-version 1 >/dev/null)

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 enables them on this stable toolchain for
# these commands only.
targets=$(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
  mkdir -p "fuzz/corpus/$target"
  # Run on a copy: new inputs found in a short CI run are not worth a dirty tree;
  # `cargo fuzz cmin` and a commit grow the committed corpus on purpose.
  cp -r "fuzz/corpus/$target" "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$scratch/$target" -- \
      -max_total_time="$seconds" -max_len=65536 -print_final_stats=0 2>&1 | tail -n 3)
  if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target found a crash: fuzz/artifacts/$target" >&2
    exit 1
  fi
done
