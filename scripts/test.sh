#!/usr/bin/env bash
# make test: set up Docker and the example images, then run every test:
# unit tests, the fuzz corpus, and the end-to-end tests against the real
# binary and the real Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/docker-up.sh
./scripts/build-images.sh --if-missing
go vet ./...
# Under CI=true the end-to-end tests fail, never skip, without Docker.
# The end-to-end tests take the longest and mostly wait on Docker: they
# start at once, beside the other packages, and their output follows.
e2e_log=$(mktemp)
trap 'rm -f "$e2e_log"' EXIT
go test -count=1 -timeout 13m ./test/e2e >"$e2e_log" 2>&1 &
e2e=$!
rc=0
go test -count=1 -timeout 13m $(go list ./... | grep -v '^berth/test/e2e$') 2>&1 || rc=$?
wait "$e2e" || rc=$?
cat "$e2e_log"
exit "$rc"
