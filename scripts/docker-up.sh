#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine: installs Debian's
# docker.io when dockerd is missing and starts dockerd when none runs.
set -euo pipefail

answers() { timeout 5 docker info >/dev/null 2>&1; }

# berth build (git work trees) and its tests need git (Debian package git).
if ! command -v git >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "docker-up: installing git..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q git >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q git >/dev/null; }
  else
    echo "docker-up: git is missing and this is not root: install it (apt-get install git)" >&2
  fi
fi

if answers; then exit 0; fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "docker-up: no Docker engine and not root: install docker.io or run as root" >&2
    exit 1
  fi
  echo "docker-up: installing Docker Engine (Debian package docker.io)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io >/dev/null
fi

if ! answers; then
  # Prefer the init system when there is one; otherwise run dockerd ourselves.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker || true
  fi
fi
if ! answers; then
  echo "docker-up: starting dockerd (log: /var/log/dockerd.log)..." >&2
  nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    answers && break
    sleep 0.5
  done
fi
if ! answers; then
  echo "docker-up: dockerd did not answer within 30s; see /var/log/dockerd.log" >&2
  exit 1
fi
echo "docker-up: Docker engine $(docker version --format '{{.Server.Version}}') answers" >&2
