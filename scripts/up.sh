#!/usr/bin/env bash
# make up: everything a fresh machine needs, then `berth up` in the
# foreground with examples/hello.yaml deployed once the API answers.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/docker-up.sh
./scripts/build-images.sh --if-missing
go build -o bin/berth ./cmd/berth

addr="${BERTH_ADDR:-127.0.0.1:7070}"
(
  for _ in $(seq 1 120); do
    ./bin/berth --addr "$addr" status >/dev/null 2>&1 && break
    sleep 0.5
  done
  ./bin/berth --addr "$addr" deploy -f examples/hello.yaml && ./bin/berth --addr "$addr" ps hello
) &
exec ./bin/berth up --listen "$addr" "$@"
