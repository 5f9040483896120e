#!/usr/bin/env bash
# sedboot demo: software SEDs, a KMIP key server and a controller booting in
# QEMU, all on this machine (127.0.0.1 only). `make demo` runs the
# prerequisites and the build first; this script fetches the boot kernel if
# needed and runs the demo program (images/cmd/demo, built into bin/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
echo "demo: fetching the boot kernel if it is not cached (make kernel)"
make --no-print-directory kernel
echo "demo: building bin/demo"
mkdir -p bin
CGO_ENABLED=0 go build -o bin/demo ./images/cmd/demo
exec bin/demo "$@"
