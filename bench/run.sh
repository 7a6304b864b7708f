#!/usr/bin/env bash
# make bench: set up Docker and the demo images, build berth (fresh, from the
# working tree) and run the benchmark (bench/main.go) once. Results are
# printed and written to bench/results.txt. Extra arguments go to the
# benchmark (e.g. -keep to keep berth's log and data dir, -v for every event).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/docker-up.sh
./scripts/build-images.sh --if-missing

tmp=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-bin.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/berth" ./cmd/berth
go build -o "$tmp/bench" ./bench

start=$SECONDS
"$tmp/bench" -berth "$tmp/berth" -out bench/results.txt "$@"
echo "bench: done in $((SECONDS - start))s"
