#!/usr/bin/env bash
# Install what is missing (redis-server, tmux, .venv) and run the whole test suite:
# unit tests (fakeredis) and integration tests (real redis-server processes forming
# clusters on free loopback ports, started and stopped by the fixtures).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COGS_BOOTSTRAP_TESTS=1 source scripts/bootstrap.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": never a pass, and never a silent one
  echo "test.sh: pytest collected no tests: the suite is missing or a filter matched nothing" >&2
  exit 1
fi
exit "$rc"
