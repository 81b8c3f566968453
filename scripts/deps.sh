#!/usr/bin/env bash
# Installs the Debian packages the tests and the lab use, when any is missing.
# Idempotent; needs root (CI and the developer machines run as root).
set -euo pipefail

packages=(
  libnbd-bin        # nbdinfo, nbdcopy, nbdsh: real NBD clients for interop tests
  nbdkit            # a second NBD server, baseline for benchmarks
  fio               # workloads with ioengine=nbd and verify=crc32c
  qemu-utils        # qemu-img, qemu-io, qemu-nbd
  iproute2          # ip netns, veth, tc netem for the multi-server test bed
  protobuf-compiler # protoc, for etcd-client's build script
  libprotobuf-dev   # protobuf's well-known .proto includes (google/protobuf/*.proto) that
                    # etcd-client's protos import; only a Recommends of protobuf-compiler,
                    # so --no-install-recommends below would leave them out
  iperf3            # loopback TCP baseline of bench/replication.sh
  chromium          # the web console's browser tests (Playwright drives it)
  libxml2-utils     # xmllint: the XML status document against docs/status.xsd
  python3-prometheus-client # a real Prometheus/OpenMetrics parser for /metrics
  curl              # scrapes /metrics in the monitoring test (mutual TLS to agents)
  etcd-server       # etcd: HA console store, fencing tests (3 members on loopback)
  nbd-client        # the kernel NBD client (netlink) behind `redoubt attach` where the nbd module exists
  e2fsprogs         # mkfs.ext4 for the file system tests
  dpkg-dev          # dpkg-deb, dpkg --root: the package test
  systemd           # systemd-analyze verify of the units in the package test
)

# cargo-deb builds the .deb (packaging/build-deb.sh, crates/redoubt/tests/package.rs); pinned.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "deps: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi

missing=()
# Node.js runs the browser tests (tests/browser); the image may bring its own node.
if ! command -v node >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

# The browser tests' npm packages (playwright-core, pinned by package-lock.json).
browser_deps() {
  local dir
  dir="$(dirname "$0")/../tests/browser"
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules/playwright-core" ]; then
    echo "deps: npm ci in tests/browser"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  browser_deps
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages: ${missing[*]}; run as root or install them" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
browser_deps
