"""Files cogs ships and the hint that names them (no imports of cogs: any module may use it)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the bundled catalog: the states of the paper's NFs (cogs/catalogs/default.toml)
DEFAULT_CATALOG = Path(str(resources.files("cogs") / "catalogs" / "default.toml"))
#: how to (re)load the library, named wherever one is missing or outdated
LOAD_HINT = f"`cogs catalog load PATH` (PATH: your catalog, or the bundled one: {DEFAULT_CATALOG})"
