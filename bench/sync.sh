#!/usr/bin/env bash
# Sync mode against async mode on the same lab, interleaved rounds; see sync.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/sync.py" "$@"
