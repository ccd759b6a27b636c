#!/usr/bin/env bash
# Install what is missing (redis-server, tmux, .venv) and run the whole test suite:
# unit tests (fakeredis) and integration tests (real redis-server processes forming
# clusters on free loopback ports, started and stopped by the fixtures), on
# COGS_TEST_WORKERS pytest-xdist workers (4: the tests mostly wait on Redis, timeouts and
# subprocesses, so 2 cores run 4 at once; tests/parallel.py says how they are shared out).
# Arguments go to pytest after ours: `bash scripts/test.sh -n 0 tests/unit` runs serially.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COGS_BOOTSTRAP_TESTS=1 source scripts/bootstrap.sh
set +e
.venv/bin/python -m pytest -n "${COGS_TEST_WORKERS:-4}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected": never a pass, and never a silent one
  echo "test.sh: pytest collected no tests: the suite is missing or a filter matched nothing" >&2
  exit 1
fi
exit "$rc"
