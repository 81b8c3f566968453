#!/usr/bin/env bash
# Builds target/debian/redoubt_<version>_<arch>.deb from the release binary, the man pages it
# generates, the systemd units, the default settings and the user guide; prints its path.
# Needs cargo-deb (scripts/deps.sh installs it).
#
#   packaging/build-deb.sh              build the release binary (cargo decides what is stale)
#   packaging/build-deb.sh --no-build   package target/release/redoubt as it is, with fast
#                                       compression (the package test, which runs inside
#                                       `cargo test --release`)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
deb_options=()
if [ "${1:-}" = "--no-build" ]; then
  deb_options+=(--fast)
else
  cargo build --release --locked -p redoubt --quiet
fi
binary=target/$profile/redoubt
[ -x "$binary" ] || { echo "build-deb: no $binary (build it, or drop --no-build)" >&2; exit 1; }
man_dir=target/man
rm -rf "$man_dir"
"$binary" man --out "$man_dir" >/dev/null
gzip -9n "$man_dir"/*.1
mkdir -p target/debian
cargo deb -p redoubt --no-build --quiet "${deb_options[@]}" --output target/debian/ >/dev/null
ls -t target/debian/redoubt_*.deb | head -1
