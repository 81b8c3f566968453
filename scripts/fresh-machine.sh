#!/usr/bin/env bash
# The fresh-machine check: does the README's main command work on a fresh machine of the kind
# the README names (Debian 12, the Rust toolchain from rustup, gcc, python3, qemu-utils, git,
# root), from a clean clone of the committed state?
#
#   sudo bash scripts/fresh-machine.sh [--test] [--rebuild-base] [WORK_DIR]
#
# It builds (once, then reuses) a minimal Debian 12 root with debootstrap, extracts it fresh
# for every run, gives it this host's rustup toolchain read-only, clones HEAD of this
# repository into it (committed state only, not the working tree), runs `bash scripts/lab.sh`
# there and expects "The lab is up.", then `redoubt lab down --dir redoubt-lab --purge`.
# --test also runs `bash scripts/test.sh` there (20+ minutes). WORK_DIR (or $FRESH_DIR)
# defaults to /var/tmp/redoubt-fresh; logs are kept in WORK_DIR/logs. Needs root.
# The last line is `fresh-machine: PASS (N seconds)` or `fresh-machine: FAIL: reason`.
set -Eeuo pipefail

usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

run_tests=0
rebuild_base=0
work_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --test) run_tests=1 ;;
    --rebuild-base) rebuild_base=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "fresh-machine: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) work_arg="$1" ;;
  esac
  shift
done

started=$(date +%s)
suite=bookworm
# What a fresh machine of this kind has besides Debian's minbase (rustup's toolchain comes
# from the host, read-only). No build-essential on purpose: its dpkg-dev, g++ and make would
# hide a missing entry in scripts/deps.sh.
base_packages=(ca-certificates gcc libc6-dev git curl pkg-config python3 qemu-utils)
base_version=1 # bump when the way the base root is made changes

log=""
fail_reason=""
mounted=()
root=""
build=""
chroot_active=0
owns_work=0

say() {
  echo "fresh-machine: $*"
  if [ -n "$log" ]; then echo "fresh-machine: $*" >>"$log"; fi
}
fail() {
  fail_reason="$*"
  exit 1
}

trap 'rc=$?; fail_reason="line $LINENO: \`$BASH_COMMAND\` exited $rc"' ERR
trap 'fail_reason="${fail_reason:-interrupted (SIGINT)}"; exit 130' INT
trap 'fail_reason="${fail_reason:-terminated (SIGTERM)}"; exit 143' TERM
trap 'fail_reason="${fail_reason:-hung up (SIGHUP)}"; exit 129' HUP

[ "$(id -u)" -eq 0 ] || { echo "fresh-machine: FAIL: needs root (debootstrap, mount, chroot)"; exit 1; }

repo="$(cd "$(dirname "$0")/.." && pwd -P)"
work="$(realpath -m "${work_arg:-${FRESH_DIR:-/var/tmp/redoubt-fresh}}")"
case "$work" in
  / | /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /root | /work/main | /work/main/*)
    echo "fresh-machine: FAIL: refusing work dir $work"; exit 1 ;;
esac
if [[ "$work" =~ [[:space:]\\] ]]; then
  echo "fresh-machine: FAIL: the work dir must not contain spaces or backslashes: $work"; exit 1
fi
root="$work/root"   # this run's machine, extracted fresh from the base tarball
build="$work/base-build"
base_tar="$work/base-$suite.tar"
base_marker="$work/base-$suite.ok"
mkdir -p "$work/logs"
log="$work/logs/run-$(date +%Y%m%d-%H%M%S).log"
: >"$log"
ln -sfn "$(basename "$log")" "$work/logs/latest.log"

# ---------------------------------------------------------------- mounts and processes

# Mount targets at or under $1, deepest first (findmnt escapes spaces; the work dir has none).
mounts_under() {
  case "$1" in "$work"/?*) ;; *) return 0 ;; esac # never the host's own tree
  findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' | sort -r -u
}

# mount ARGS... TARGET, refusing a target whose path goes through a symlink (a symlink inside
# the chroot could point at the host's own /dev or /proc).
do_mount() {
  local target="${*: -1}"
  [ "$(realpath -e "$target")" = "$target" ] || fail "mount target $target is not a plain directory path"
  mount "$@" || return 1
  mounted+=("$target")
}

bind_ro() {
  do_mount --bind "$1" "$2" || fail "could not bind-mount $1 on $2"
  mount -o remount,bind,ro "$2" || fail "could not remount $2 read-only"
  if touch "$2/.fresh-machine-rw-probe" 2>/dev/null; then
    rm -f "$2/.fresh-machine-rw-probe"
    fail "$2 is writable after the read-only remount"
  fi
}

unmount_one() {
  mountpoint -q "$1" || return 0
  if ! umount "$1" 2>/dev/null; then
    say "$1 is busy; unmounting it lazily"
    umount -l "$1"
  fi
}

# Unmounts what this run mounted (reverse order), then anything else left under the chroot
# and the base build dir (debootstrap's own /proc after a failed build); verifies nothing is.
unmount_all() {
  local i t left
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    unmount_one "${mounted[i]}" || true
  done
  mounted=()
  for t in $(mounts_under "$root") $(mounts_under "$build"); do
    unmount_one "$t" || true
  done
  left="$(mounts_under "$root"; mounts_under "$build")"
  if [ -n "$left" ]; then
    say "still mounted after unmounting: $(echo "$left" | tr '\n' ' ')"
    return 1
  fi
}

# Removes a dir this script made (it holds our marker file) once nothing is mounted under it.
safe_rm() {
  local dir="$1" marker="$2"
  [ -e "$dir" ] || return 0
  case "$dir" in "$work"/?*) ;; *) say "refusing to remove $dir (not under $work)"; return 1 ;; esac
  if [ ! -e "$dir/$marker" ] && [ -n "$(ls -A "$dir")" ]; then
    say "refusing to remove $dir: it lacks $marker, so this script did not make it"
    return 1
  fi
  for t in $(mounts_under "$dir"); do unmount_one "$t" || true; done
  if [ -n "$(mounts_under "$dir")" ]; then
    say "refusing to remove $dir: still mounted: $(mounts_under "$dir" | tr '\n' ' ')"
    return 1
  fi
  rm -rf --one-file-system "$dir"
}

# Processes whose root directory is the chroot (or under it).
chroot_pids() {
  local p r
  for p in /proc/[0-9]*; do
    r="$(readlink "$p/root" 2>/dev/null)" || continue
    if [ "$r" = "$root" ] || [[ "$r" == "$root"/* ]]; then echo "${p#/proc/}"; fi
  done
}

describe_pids() {
  local p
  for p in "$@"; do
    echo "  $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
  done
}

# Stops every process left in the chroot: TERM, 10 s, then KILL. Prints what it found.
stop_chroot_processes() {
  local pids i
  mapfile -t pids < <(chroot_pids)
  [ ${#pids[@]} -gt 0 ] || return 0
  say "WARN: ${#pids[@]} process(es) still run in the chroot; stopping them:"
  describe_pids "${pids[@]}" | tee -a "$log"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    mapfile -t pids < <(chroot_pids)
    [ ${#pids[@]} -gt 0 ] || return 0
    sleep 0.5
  done
  say "WARN: still running after SIGTERM, sending SIGKILL: ${pids[*]}"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 1
  mapfile -t pids < <(chroot_pids)
  [ ${#pids[@]} -eq 0 ] || say "WARN: could not stop: ${pids[*]}"
}

on_exit() {
  local status=$? cleanup_ok=1
  set +e
  trap - ERR INT TERM HUP
  if [ "$owns_work" -eq 0 ]; then # another run owns the work dir: touch nothing of it
    say "FAIL: ${fail_reason:-exit status $status}"
    exit 1
  fi
  if [ "$chroot_active" -eq 1 ]; then stop_chroot_processes; fi
  if [ ${#mounted[@]} -gt 0 ] || [ -n "$(mounts_under "$root"; mounts_under "$build")" ]; then
    say "unmounting"
    unmount_all || cleanup_ok=0
  fi
  # Make sure the host's own /proc, /sys and /dev mounts are as they were.
  while read -r line; do
    [ -n "$line" ] || continue
    if ! grep -qxF "$line" <<<"$(host_system_mounts)"; then
      say "WARN: the host's mount \"$line\" is gone"
      cleanup_ok=0
    fi
  done <<<"$host_mounts_before"
  if [ "$status" -eq 0 ] && [ "$cleanup_ok" -eq 1 ]; then
    if [ -d "$root" ]; then safe_rm "$root" .redoubt-fresh-root || say "WARN: could not remove $root"; fi
    say "log: $log"
    say "PASS ($(($(date +%s) - started)) seconds)"
    exit 0
  fi
  [ "$cleanup_ok" -eq 1 ] || fail_reason="${fail_reason:+$fail_reason; }cleanup left mounts behind (see above)"
  if [ -d "$root" ] && [ "$cleanup_ok" -eq 1 ]; then say "the chroot is kept for inspection: $root"; fi
  say "log: $log"
  say "FAIL: ${fail_reason:-exit status $status}"
  [ "$status" -ne 0 ] || status=1
  exit "$status"
}
trap on_exit EXIT
host_system_mounts() { findmnt -rn -o TARGET,SOURCE,FSTYPE | awk '$1 ~ /^\/(proc|sys|dev)(\/|$)/'; }
host_mounts_before="$(host_system_mounts)"
exec 9>"$work/.lock"
flock -n 9 || fail "another fresh-machine run holds $work/.lock"
owns_work=1

# ---------------------------------------------------------------- the base root

# "URI SUITE" for every deb source of the host's apt (one-line and deb822 formats).
apt_source_pairs() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush(   n, m, a, b, u, s) {
           if (types ~ /(^| )deb( |$)/ && enabled != "no") {
             n = split(uris, u, " "); m = split(suites, s, " ")
             for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b]
           }
           types = uris = suites = enabled = ""
         }
         /^[[:space:]]*$/ { flush(); next }
         /^[[:space:]]*#/ { next }
         tolower($1) == "types:" { $1 = ""; types = $0 }
         tolower($1) == "uris:" { $1 = ""; uris = $0 }
         tolower($1) == "suites:" { $1 = ""; suites = $0 }
         tolower($1) == "enabled:" { enabled = tolower($2) }
         END { flush() }' "$f"
  done
}

pairs="$(apt_source_pairs 2>/dev/null || true)"
mirror="$(awk -v s="$suite" '$2 == s && $1 ~ /^https?:\/\// && $1 !~ /security/ { print $1; exit }' <<<"$pairs")"
mirror="${mirror:-http://deb.debian.org/debian}"
mirror="${mirror%/}"
security="$(awk -v s="$suite-security" '$2 == s && $1 ~ /^https?:\/\// { print $1; exit }' <<<"$pairs")"
security="${security:-http://deb.debian.org/debian-security}"
security="${security%/}"
signature="version=$base_version suite=$suite mirror=$mirror security=$security packages=${base_packages[*]}"

build_base() {
  local t0 rc
  t0=$(date +%s)
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap on the host (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >>"$log" 2>&1 ||
      { apt-get update -qq >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >>"$log" 2>&1; } ||
      fail "could not install debootstrap (apt-get; see $log)"
  fi
  safe_rm "$build" .redoubt-fresh-build || fail "could not remove the old $build"
  mkdir -p "$build"
  touch "$build/.redoubt-fresh-build"
  say "building the base root: debootstrap --variant=minbase $suite from $mirror, plus ${base_packages[*]} (a few minutes)"
  set +e
  debootstrap --variant=minbase --include="$(IFS=,; echo "${base_packages[*]}")" \
    "$suite" "$build" "$mirror" 2>&1 | tee -a "$log" | grep -E '^I: (Retrieving Release|Validating Packages|Installing (core|base) packages|Base system installed)' | sed 's/^/  /'
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$build/debootstrap/debootstrap.log" 2>/dev/null | sed 's/^/  /' | tee -a "$log"
    fail "debootstrap exited $rc (see $log)"
  fi
  [ -z "$(mounts_under "$build")" ] || fail "debootstrap left mounts under $build"

  cat >"$build/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
  # A chroot has no init: packages that start a service on install (etcd-server) must not
  # start it here, where it would outlive the run and hold ports on the host's loopback.
  cat >"$build/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
# fresh-machine.sh: a chroot has no init; do not start services on package installation.
exit 101
EOF
  chmod 0755 "$build/usr/sbin/policy-rc.d"
  if ! grep -qs localhost "$build/etc/hosts"; then
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$build/etc/hosts"
  fi
  find "$build/var/lib/apt/lists" "$build/var/cache/apt/archives" -maxdepth 1 -type f -delete
  for cmd in "gcc --version" "git --version" "curl --version" "python3 --version" "qemu-img --version" "pkg-config --version"; do
    # shellcheck disable=SC2086 # word splitting of the command on purpose
    chroot "$build" $cmd >/dev/null 2>&1 || fail "the base root lacks a working \`$cmd\`"
  done
  rm -f "$build/.redoubt-fresh-build"
  say "packing the base root into $base_tar"
  tar --numeric-owner --xattrs --xattrs-include='*' -cpf "$base_tar.tmp" -C "$build" .
  mv -f "$base_tar.tmp" "$base_tar"
  echo "$signature" >"$base_marker"
  touch "$build/.redoubt-fresh-build"
  safe_rm "$build" .redoubt-fresh-build || fail "could not remove $build"
  say "base root built in $(($(date +%s) - t0)) seconds"
}

say "work dir $work, log $log"
say "repository $repo (HEAD $(git -C "$repo" rev-parse --short HEAD): $(git -C "$repo" log -1 --format=%s | cut -c1-90))"
if [ "$rebuild_base" -eq 0 ] && [ -f "$base_tar" ] && [ "$(cat "$base_marker" 2>/dev/null)" = "$signature" ]; then
  say "reusing the base root $base_tar (built $(date -r "$base_marker" '+%Y-%m-%d %H:%M'); --rebuild-base to make it again)"
else
  build_base
fi

# ---------------------------------------------------------------- this run's machine

host_rustup="${RUSTUP_HOME:-/root/.rustup}"
host_cargo_bin="${CARGO_HOME:-/root/.cargo}/bin"
if [ ! -x "$host_cargo_bin/rustup" ] || [ ! -d "$host_rustup/toolchains" ]; then
  fail "no rustup toolchain on the host ($host_cargo_bin/rustup, $host_rustup/toolchains)"
fi

say "extracting a fresh root from the base: $root"
safe_rm "$root" .redoubt-fresh-root || fail "could not remove the previous run's $root"
mkdir -p "$root"
touch "$root/.redoubt-fresh-root"
tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$base_tar" -C "$root"
touch "$root/.redoubt-fresh-root"
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The site's own CA certificates (an HTTPS proxy's, say) belong to every machine of this
# network, fresh or not: without them cargo, npm and curl cannot reach the registries here.
site_cas=()
if [ -d /usr/local/share/ca-certificates ]; then
  mapfile -t site_cas < <(cd /usr/local/share/ca-certificates && find . -name '*.crt' \( -type f -o -type l \) | sed 's|^\./||' | sort)
fi
if [ ${#site_cas[@]} -gt 0 ]; then
  say "adding the host's site CA certificates (/usr/local/share/ca-certificates: ${site_cas[*]}) to the chroot's trust store"
  for f in "${site_cas[@]}"; do
    mkdir -p "$(dirname "$root/usr/local/share/ca-certificates/$f")"
    cp -L "/usr/local/share/ca-certificates/$f" "$root/usr/local/share/ca-certificates/$f"
  done
  chroot "$root" update-ca-certificates >>"$log" 2>&1 || fail "update-ca-certificates failed in the chroot (see $log)"
fi

say "mounting /proc, /sys (read-only), /dev, /dev/pts, a tmpfs on /dev/shm, and the host's rustup toolchain (read-only)"
if ! do_mount -t proc proc "$root/proc" 2>/dev/null; then do_mount --bind /proc "$root/proc"; fi
bind_ro /sys "$root/sys"
do_mount --bind /dev "$root/dev"
do_mount --bind /dev/pts "$root/dev/pts"
do_mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin" "$root/root/cargo-home/bin"
bind_ro "$host_rustup" "$root/root/.rustup"
bind_ro "$host_cargo_bin" "$root/root/.cargo/bin"
chroot_active=1

# PATH gets rustup and its proxies only: anything else `cargo install`ed on this host later
# (cargo-deb, cargo-fuzz) is not on a fresh machine, and the project's scripts must install
# it themselves (into the chroot's own CARGO_HOME).
proxies=/opt/rustup-proxies/bin
mkdir -p "$root$proxies"
rustup_real="$(realpath "$host_cargo_bin/rustup")"
left_out=()
for f in "$host_cargo_bin"/*; do
  name="$(basename "$f")"
  if [ "$(realpath "$f")" = "$rustup_real" ]; then
    ln -s "/root/.cargo/bin/$name" "$root$proxies/$name"
  else
    left_out+=("$name")
  fi
done
if [ ${#left_out[@]} -gt 0 ]; then
  say "left off PATH (in the host's $host_cargo_bin but not part of rustup): ${left_out[*]}"
fi

chroot_env=(
  HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM="${TERM:-dumb}"
  PATH="/root/cargo-home/bin:$proxies:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  CARGO_HOME=/root/cargo-home RUSTUP_HOME=/root/.rustup
)
# The host's proxy settings, if any, are the network's, not the machine's: pass them on.
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!v:-}" ]; then chroot_env+=("$v=${!v}"); fi
done
in_chroot() {
  chroot "$root" /usr/bin/env -i "${chroot_env[@]}" "$@" </dev/null
}
# tee that outlives a Ctrl-C, so the output of what finishes after it (apt lets dpkg end) stays
# visible; the INT trap runs once the chroot's command has ended.
keep_log() { (trap '' INT; exec tee -a "$@"); }

# rustup reads its settings from the read-only RUSTUP_HOME; name the toolchain if it cannot
# resolve the default by itself.
if ! in_chroot cargo --version >/dev/null 2>&1; then
  chroot_env+=(RUSTUP_TOOLCHAIN=stable)
  in_chroot cargo --version >/dev/null 2>&1 ||
    { in_chroot cargo --version 2>&1 | tail -n 5 | tee -a "$log"; fail "cargo does not run in the chroot"; }
fi
say "toolchain in the chroot: $(in_chroot cargo --version), $(in_chroot rustc --version | cut -d' ' -f1-2)"

say "cloning HEAD of $repo into /root/redoubt (committed state only)"
git clone --quiet --no-local "$repo" "$root/root/redoubt"
say "clone at $(git -C "$root/root/redoubt" log -1 --format='%h %s' | cut -c1-100)"

say "SKIP: starting services on package installation (e.g. etcd-server's): a chroot has no init (systemd is not PID 1 here), so policy-rc.d denies them; the lab and the tests start what they need themselves"
if [ "$run_tests" -eq 1 ]; then
  [ -c "$root/dev/fuse" ] || say "SKIP: FUSE in the tests: no /dev/fuse on this host"
  [ -e "$root/dev/loop-control" ] || say "SKIP: loop devices in the tests: no /dev/loop-control on this host"
  [ -d /sys/module/nbd ] || say "SKIP: the kernel NBD client in the tests: the nbd module is not loaded on this host"
fi

# ---------------------------------------------------------------- the main command

step_log="$work/logs/lab-$(date +%Y%m%d-%H%M%S).log"
say "running \`bash scripts/lab.sh\` in the chroot (apt-get installs, cargo build --release: 10-20 minutes on 2 cores); output also in $step_log"
t0=$(date +%s)
set +e
in_chroot bash -c 'cd /root/redoubt && bash scripts/lab.sh' 2>&1 | keep_log "$log" "$step_log"
lab_rc=${PIPESTATUS[0]}
set -e
say "scripts/lab.sh exited $lab_rc after $(($(date +%s) - t0)) seconds"
lab_up=0
if grep -qF "The lab is up." "$step_log"; then lab_up=1; fi

if [ -x "$root/root/redoubt/target/release/redoubt" ]; then
  say "running \`target/release/redoubt lab down --dir redoubt-lab --purge\` in the chroot"
  set +e
  in_chroot bash -c 'cd /root/redoubt && target/release/redoubt lab down --dir redoubt-lab --purge' 2>&1 | keep_log "$log"
  down_rc=${PIPESTATUS[0]}
  set -e
else
  say "no target/release/redoubt: nothing to take down"
  down_rc=0
fi
sleep 1
mapfile -t leftover < <(chroot_pids)
if [ ${#leftover[@]} -gt 0 ]; then
  say "WARN: after lab down, ${#leftover[@]} process(es) still run in the chroot:"
  describe_pids "${leftover[@]}" | tee -a "$log"
fi
stop_chroot_processes

[ "$lab_rc" -eq 0 ] || fail "scripts/lab.sh exited $lab_rc (see $step_log)"
[ "$lab_up" -eq 1 ] || fail "scripts/lab.sh did not print \"The lab is up.\" (see $step_log)"
[ "$down_rc" -eq 0 ] || fail "redoubt lab down --purge exited $down_rc"
say "the lab came up (\"The lab is up.\") and went down"

# ---------------------------------------------------------------- the test command (--test)

if [ "$run_tests" -eq 1 ]; then
  test_log="$work/logs/test-$(date +%Y%m%d-%H%M%S).log"
  say "running \`bash scripts/test.sh\` in the chroot (20+ minutes); output also in $test_log"
  t0=$(date +%s)
  set +e
  in_chroot bash -c 'cd /root/redoubt && bash scripts/test.sh' 2>&1 | keep_log "$log" "$test_log"
  test_rc=${PIPESTATUS[0]}
  set -e
  say "scripts/test.sh exited $test_rc after $(($(date +%s) - t0)) seconds"
  stop_chroot_processes
  [ "$test_rc" -eq 0 ] || fail "scripts/test.sh exited $test_rc (see $test_log)"
fi
