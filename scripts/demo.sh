#!/usr/bin/env bash
# Set everything up, start a local 3-primary coordinator cluster on ports 7000-7002
# and run the distributed NF demo on it. Stop the cluster with:
#   .venv/bin/cogs cluster down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
url=$(.venv/bin/cogs cluster up)
.venv/bin/cogs demo --url "$url" --middleboxes "${MIDDLEBOXES:-4}"
