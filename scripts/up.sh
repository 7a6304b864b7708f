#!/usr/bin/env bash
# make up: everything a fresh machine needs, then `berth up` in the
# foreground with examples/hello.yaml deployed once the API answers, unless
# an app hello exists already (scripts/deploy-example.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/docker-up.sh
./scripts/build-images.sh --if-missing
go build -o bin/berth ./cmd/berth

addr="${BERTH_ADDR:-127.0.0.1:7070}"
# After the exec below, $$ is the pid of `berth up` itself.
BERTH_ADDR="$addr" ./scripts/deploy-example.sh ./bin/berth examples/hello.yaml $$ &
exec ./bin/berth up --listen "$addr" "$@"
