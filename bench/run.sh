#!/usr/bin/env bash
# make bench: set up Docker and the demo images, build berth (fresh, from the
# working tree) and run the benchmark (bench/main.go) once. Results are
# printed and written to bench/results.txt. Extra arguments go to the
# benchmark (e.g. -keep to keep berth's log and data dir, -v for every event).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/docker-up.sh
./scripts/build-images.sh --if-missing
# The gateway bench compares with nginx and loads with wrk (Debian packages).
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "bench: wrk and nginx are needed (apt-get install wrk nginx)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx >/dev/null; }
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-bin.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/berth" ./cmd/berth
go build -o "$tmp/bench" ./bench
go build -o "$tmp/bench-gateway" ./bench/gateway

start=$SECONDS
"$tmp/bench" -berth "$tmp/berth" -out bench/results.txt "$@"
"$tmp/bench-gateway" -berth "$tmp/berth" -out bench/gateway-results.txt
echo "bench: done in $((SECONDS - start))s"
