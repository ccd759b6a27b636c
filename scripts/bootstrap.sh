#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian/Ubuntu machine: redis-server (Debian
# package; and tmux, curl, iproute2, nftables, ping for the tests) when missing, a
# venv in .venv with cogs and its dev dependencies.
# Idempotent and quick when nothing changed. Sourced by scripts/demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\033[2m· %s\033[0m\n' "$*" >&2; }

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# the test suite also drives `cogs monitor` in tmux, as a person would see it,
# curl, as a web cache client, and the lab's tools (`cogs lab`: iproute2 for
# namespaces and links, nftables for partitions, ping for round trips)
if [ "${COGS_BOOTSTRAP_TESTS:-0}" = 1 ]; then
  command -v tmux >/dev/null 2>&1 || need+=(tmux)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
  # live capture: replays into lab interfaces, libpcap for the kernel filters (tcpdump -dd checks them)
  command -v tcpreplay >/dev/null 2>&1 || need+=(tcpreplay)
  command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
fi
if [ "${#need[@]}" -gt 0 ]; then
  log "missing: ${need[*]}: installing Debian's packages"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d 101: install the binary without starting a system service on 6379
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
redis-server --version | grep -Eq 'v=(7|8|9)\.' || { echo "cogs needs redis-server 7+ ($(redis-server --version))" >&2; exit 1; }

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cogs needs Python 3.11+ (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.cogs-deps
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing cogs and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
