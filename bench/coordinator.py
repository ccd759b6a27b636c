"""Coordinator throughput bench (paper Fig. 12). Same as `cogs bench coordinator`.

python bench/coordinator.py [--quick] [--out FILE] [--url URL]
"""

from __future__ import annotations

import sys

from cogs.cli import main

if __name__ == "__main__":
    main(["bench", "coordinator", *sys.argv[1:]])
