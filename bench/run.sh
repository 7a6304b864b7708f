#!/usr/bin/env bash
# make bench: set up Docker and the demo images, build berth (fresh, from the
# working tree) and run the benchmarks once: bench/main.go (results in
# bench/results.txt), bench/gateway (bench/gateway-results.txt),
# bench/tasks (bench/tasks-results.txt), bench/failover
# (bench/failover/results.txt) and bench/placement with its million run
# (bench/placement-results.txt; about 15 minutes), bench/images, the registry's
# throughput and the herd of pulls (bench/images-results.txt), and bench/builds,
# berth build and git push to serving against docker build/push/run
# (bench/builds-results.txt), and bench/gatewaysplit, the gateway's cost of
# a canary split (bench/gatewaysplit-results.txt). Extra arguments go to the first
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
go build -o "$tmp/bench-tasks" ./bench/tasks
go build -o "$tmp/bench-failover" ./bench/failover
go build -o "$tmp/bench-placement" ./bench/placement
go build -o "$tmp/bench-images" ./bench/images
go build -o "$tmp/bench-rollout" ./bench/rollout
go build -o "$tmp/bench-builds" ./bench/builds
go build -o "$tmp/bench-gatewaysplit" ./bench/gatewaysplit

start=$SECONDS
"$tmp/bench" -berth "$tmp/berth" -out bench/results.txt "$@"
"$tmp/bench-gateway" -berth "$tmp/berth" -out bench/gateway-results.txt
"$tmp/bench-tasks" -berth "$tmp/berth" -out bench/tasks-results.txt
"$tmp/bench-failover" -berth "$tmp/berth" -out bench/failover/results.txt
"$tmp/bench-placement" -c1m -out bench/placement-results.txt
"$tmp/bench-images" -berth "$tmp/berth" -out bench/images-results.txt
"$tmp/bench-rollout" -berth "$tmp/berth" -out bench/rollout-results.txt
"$tmp/bench-builds" -berth "$tmp/berth" -out bench/builds-results.txt
"$tmp/bench-gatewaysplit" -out bench/gatewaysplit-results.txt
echo "bench: done in $((SECONDS - start))s"
