#!/usr/bin/env bash
# A hand-driven multi-server test bed: N "servers" as network namespaces on one bridge.
#
#   scripts/testbed.sh up N        create rdt-manual-1 … rdt-manual-N (1 <= N <= 254), each with
#                                  lo up and eth0 = 198.18.0.<i>/24, all joined to a Linux bridge
#                                  in the namespace rdt-manual-switch (veth pairs)
#   scripts/testbed.sh down        kill every process inside them and delete them all
#   scripts/testbed.sh list        the namespaces, their addresses and how many processes run there
#   scripts/testbed.sh exec I CMD… run CMD inside server I (same as ip netns exec rdt-manual-I CMD…)
#
# Example (root):
#   scripts/testbed.sh up 2
#   scripts/testbed.sh exec 1 target/debug/redoubt datatap --dir /tmp/rd \
#       --volume lv0:64MiB --listen 198.18.0.1:10809 &
#   scripts/testbed.sh exec 2 nbdinfo nbd://198.18.0.1:10809/lv0
#   ip -n rdt-manual-2 link set eth0 down                               # cut server 2 off
#   tc -n rdt-manual-2 qdisc replace dev eth0 root tbf rate 8mbit burst 32kbit latency 400ms
#   tc -n rdt-manual-2 qdisc replace dev eth0 root netem delay 50ms    # if the kernel has netem
#   scripts/testbed.sh down
#
# Nothing is configured in the caller's namespace; addresses are only 198.18.0.0/24 (RFC 2544
# benchmarking space) inside these namespaces. The tests use the same layout from Rust
# (crates/testkit/src/netns.rs, namespaces rdt-<pid>-…), with faults applied by a userspace
# switch because CI kernels lack sch_netem. Needs root and iproute2.
set -euo pipefail

PREFIX=rdt-manual
SWITCH=$PREFIX-switch

die() { echo "testbed.sh: $*" >&2; exit 1; }

namespaces() { ip netns list | awk '{print $1}' | grep -E "^$PREFIX-" || true; }

up() {
    local count=$1
    [[ $count =~ ^[0-9]+$ ]] && ((count >= 1 && count <= 254)) || die "up N: N must be 1..254"
    [[ -z $(namespaces) ]] || die "a manual test bed exists already: scripts/testbed.sh down"
    ip netns add "$SWITCH"
    ip -n "$SWITCH" link set lo up
    ip -n "$SWITCH" link add br0 type bridge
    ip -n "$SWITCH" link set br0 up
    local i ns
    for ((i = 1; i <= count; i++)); do
        ns=$PREFIX-$i
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$SWITCH" link add "port$i" type veth peer name eth0 netns "$ns"
        ip -n "$SWITCH" link set "port$i" master br0 up
        ip -n "$ns" addr add "198.18.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        echo "$ns 198.18.0.$i"
    done
}

down() {
    local ns pid
    for ns in $(namespaces); do
        for pid in $(ip netns pids "$ns"); do
            kill -9 "$pid" 2>/dev/null || true
        done
        ip netns delete "$ns"
        echo "deleted $ns"
    done
}

list() {
    local ns address processes
    for ns in $(namespaces); do
        address=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' || true)
        processes=$(ip netns pids "$ns" | wc -l)
        echo "$ns ${address:--} processes=$processes"
    done
}

case ${1:-} in
    up) [[ $# -eq 2 ]] || die "usage: up N"; up "$2" ;;
    down) down ;;
    list) list ;;
    exec)
        [[ $# -ge 3 ]] || die "usage: exec I CMD…"
        ns=$PREFIX-$2
        shift 2
        exec ip netns exec "$ns" "$@"
        ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
