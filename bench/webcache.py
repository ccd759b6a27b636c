"""Cooperative web cache bench (paper Fig. 11c). Same as `cogs bench webcache`.

python bench/webcache.py [--quick] [--out FILE] [--url URL]
"""

from __future__ import annotations

import sys

from cogs.cli import main

if __name__ == "__main__":
    main(["bench", "webcache", *sys.argv[1:]])
