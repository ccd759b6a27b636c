"""NF scaling bench (paper Fig. 11a). Same as `cogs bench scaling`.

python bench/scaling.py [--quick] [--out FILE] [--url URL]
"""

from __future__ import annotations

import sys

from cogs.cli import main

if __name__ == "__main__":
    main(["bench", "scaling", *sys.argv[1:]])
