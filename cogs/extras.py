"""Which optional extra of ``cogs-nf`` provides a module a base install lacks.

A base install carries the coordinator side and the proxy library; NF, web cache,
TLS and bench code import their dependencies (dpkt, aiohttp, ...) only where used.
When one is missing, the CLI names the extra to install instead of a traceback. The
answer is read from the installed package's own metadata (``Requires-Dist: dpkt;
extra == "nf"``), so pyproject.toml stays the one place that says it.
"""

from __future__ import annotations

import re
from importlib import metadata

DIST = "cogs-nf"
# ``dpkt>=1.9.8; extra == "nf"`` or ``cogs-nf[nf,plot]; extra == "bench"``
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?[^;]*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]")
#: import name -> distribution name, where they differ
_DIST_OF = {"yaml": "pyyaml"}


def extras_providing(module: str) -> list[str]:
    """The extras that install ``module`` (its top-level import name), fewest
    packages first, the catch-all ``dev`` last."""
    top = module.split(".", maxsplit=1)[0]
    want = _norm(_DIST_OF.get(top, top))
    try:
        reqs = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return []
    direct: dict[str, set[str]] = {}
    nested: dict[str, set[str]] = {}  # extra -> extras it pulls in (self-references)
    for r in reqs:
        if m := _REQ.match(r):
            name, subs, extra = _norm(m[1]), m[2] or "", m[3]
            if name == _norm(DIST):
                nested.setdefault(extra, set()).update(x.strip() for x in subs.split(",") if x.strip())
            else:
                direct.setdefault(extra, set()).add(name)

    def closure(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
        out = set(direct.get(extra, ()))
        for sub in nested.get(extra, ()):
            if sub not in seen:
                out |= closure(sub, seen | {extra})
        return out

    found = [e for e in {*direct, *nested} if want in closure(e)]
    return sorted(found, key=lambda e: (e == "dev", len(closure(e)), e))


def missing_extra_message(err: ModuleNotFoundError) -> str | None:
    """One line telling what to install for ``err``, or None if no extra has it."""
    name = (err.name or "").split(".", maxsplit=1)[0]
    extras = extras_providing(name)
    if not extras:
        return None
    also = [e for e in extras[1:] if e != "dev"]
    alt = f" (also in {', '.join(f'[{e}]' for e in also)})" if also else ""
    return f"this needs {name}, which a base install of {DIST} leaves out: pip install '{DIST}[{extras[0]}]'{alt}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
