#!/usr/bin/env bash
# Builds the local images berth's tests and examples use (no registry needed):
#   berth/demo:1     examples/demo, static Go binary on scratch
#   berth/demo:2     the same with DEMO_VERSION=2 (for rolling updates)
#   berth/busybox:1  Debian's busybox-static on scratch
# Usage: scripts/build-images.sh [--if-missing]
#   --if-missing  only build images that are missing or older than their sources
set -euo pipefail

die() { echo "build-images: $*" >&2; exit 1; }

if_missing=false
for arg in "$@"; do
  case "$arg" in
    --if-missing) if_missing=true ;;
    -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (usage: $0 [--if-missing])" ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.." || die "cannot cd to the repository root"

command -v docker >/dev/null 2>&1 || die "docker not found (see scripts/docker-up.sh)"
timeout 10 docker info >/dev/null 2>&1 || die "Docker engine does not answer (start it with scripts/docker-up.sh)"

# Each image carries a hash of its sources (label berth.source), so that
# --if-missing also rebuilds an image whose sources changed.
demo_source=$(cat examples/demo/*.go examples/demo/Dockerfile go.mod go.sum | sha256sum | cut -c1-16)
busybox_source=$(cat examples/busybox/Dockerfile | sha256sum | cut -c1-16)
source_of() { case "$1" in berth/demo:*) echo "$demo_source" ;; *) echo "$busybox_source" ;; esac; }

# wanted IMAGE: true when IMAGE should be built.
wanted() {
  ! $if_missing && return 0
  [ "$(docker image inspect -f '{{index .Config.Labels "berth.source"}}' "$1" 2>/dev/null)" != "$(source_of "$1")" ]
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/berth-images.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT

# build IMAGE CONTEXT [docker build args...]
build() {
  local image=$1 ctx=$2 out start
  shift 2
  start=$SECONDS
  out=$(docker build -q -t "$image" --label "berth.source=$(source_of "$image")" "$@" "$ctx" 2>&1) || { echo "$out" >&2; die "docker build of $image failed"; }
  echo "built $image ($(docker image inspect -f '{{.Id}}' "$image" | cut -c1-19), $((SECONDS - start))s)"
}

# berth/demo:1 and :2
demo_images=()
for image in berth/demo:1 berth/demo:2; do
  if wanted "$image"; then demo_images+=("$image"); fi
done
if ((${#demo_images[@]})); then
  command -v go >/dev/null 2>&1 || die "go not found: needed to compile examples/demo"
  mkdir "$tmp/demo"
  CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o "$tmp/demo/demo" ./examples/demo \
    || die "go build ./examples/demo failed"
  cp examples/demo/Dockerfile "$tmp/demo/"
  for image in "${demo_images[@]}"; do
    case "$image" in
      berth/demo:1) build "$image" "$tmp/demo" ;;
      berth/demo:2) build "$image" "$tmp/demo" --build-arg DEMO_VERSION=2 ;;
    esac
  done
fi

# berth/busybox:1
if wanted berth/busybox:1; then
  if [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" != "install ok installed" ]; then
    [ "$(id -u)" = 0 ] || die "Debian package busybox-static is missing; install it as root (apt-get install busybox-static)"
    echo "build-images: installing Debian package busybox-static..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q busybox-static >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q busybox-static >/dev/null; } \
      || die "apt-get install busybox-static failed"
  fi
  [ -x /bin/busybox ] || die "/bin/busybox not found although busybox-static is installed"
  mkdir "$tmp/busybox"
  cp /bin/busybox "$tmp/busybox/busybox"
  cp examples/busybox/Dockerfile "$tmp/busybox/"
  build berth/busybox:1 "$tmp/busybox"
fi
