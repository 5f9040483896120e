#!/usr/bin/env bash
# make demo: runs sedboot's demo. Stage 1 walks four software SEDs through
# the life cycle sedboot manages (enable, lock on power cycle, unlock,
# rotate, PSID revert), on the host, in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
echo "demo: software SED life cycle (scripts/seddemo)"
go run ./scripts/seddemo
