"""Design-choice bench (paper Fig. 10 + Table III). Same as `cogs bench design`.

python bench/design_choices.py [--quick] [--out FILE] [--url URL]
"""

from __future__ import annotations

import sys

from cogs.cli import main

if __name__ == "__main__":
    main(["bench", "design", *sys.argv[1:]])
