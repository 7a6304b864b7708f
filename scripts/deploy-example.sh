#!/usr/bin/env bash
# deploy-example.sh BERTH SPEC [PID]: once the berth API answers (address
# and token as the CLI finds them: BERTH_ADDR, BERTH_TOKEN, ./.berth/token),
# deploy SPEC unless its app exists already: a restart of `make up` never
# rolls back the user's own update of the example. With PID (the `berth up`
# this is for), nothing is done once that process has ended: a `berth up`
# that failed (its data dir in use) must not touch the one that runs.
set -euo pipefail
berth=$1 spec=$2 pid=${3:-}

gone() { [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; }

name=$(sed -n 's/^name:[[:space:]]*\([A-Za-z0-9-]*\).*/\1/p' "$spec" | head -n 1)
if [ -z "$name" ]; then
  echo "deploy-example: $spec has no name: line" >&2
  exit 1
fi
for _ in $(seq 1 120); do
  gone && exit 0
  "$berth" status >/dev/null 2>&1 && break
  sleep 0.5
done
gone && exit 0
if out=$("$berth" ps "$name" 2>&1); then
  echo "$name exists already: $spec is not deployed again ('berth deploy -f $spec' does)"
  exit 0
fi
case $out in
  *"no app named $name"*) "$berth" deploy -f "$spec" && "$berth" ps "$name" ;;
  *) echo "deploy-example: $out" >&2; exit 1 ;;
esac
