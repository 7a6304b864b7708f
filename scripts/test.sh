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
go test -count=1 -timeout 13m ./... 2>&1
