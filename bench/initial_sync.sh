#!/usr/bin/env bash
# Initial sync (full sync) vs nbdcopy between two qemu-nbd; see bench/initial_sync.py.
exec python3 "$(dirname "$0")/initial_sync.py" "$@"
