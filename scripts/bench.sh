#!/usr/bin/env bash
# make bench: runs every Go benchmark in the module (BENCH selects, BENCHTIME
# sets the time per benchmark), keeps the raw output in build/bench.txt and
# regenerates the results table in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
mkdir -p build
bench=${BENCH:-.}
benchtime=${BENCHTIME:-1s}
echo "bench: go test -run '^\$' -bench '$bench' -benchtime $benchtime ./... (raw output: build/bench.txt)"
go test -run '^$' -bench "$bench" -benchtime "$benchtime" -benchmem -timeout 60m ./... | tee build/bench.txt
go run ./scripts/benchtable -doc docs/benchmarks.md < build/bench.txt
