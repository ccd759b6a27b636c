"""Assemble the Lua sources (lua/, checkers/) into one Redis Functions library.

The library carries the state catalog, so every node runs exactly the states the
catalog names and a proxy built for another catalog or library version is refused
(the token check in lua/api.lua). Type and checker files open with a header
(``-- update: add sub``) that tells the Python side their ops and parameters;
adding a type or a checker is adding one file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cogs.errors import ConfigError
from cogs.keys import DEFAULT, SLOTS, Namespace, slot_tag
from cogs.protocol import LIBRARY, lua_constants

LIBRARY_NAME = LIBRARY  # the default NF's; another NF's is cogs_<nf> (cogs/keys.py)
_HEADER_LINE = re.compile(r"^--\s?(?:(?P<key>[a-z_-]+):(?P<value>.*)|(?P<cont>\s+.*))$")


@dataclass(frozen=True)
class TypeSpec:
    name: str
    update: tuple[str, ...]
    retrieve: tuple[str, ...]
    check: tuple[str, ...]
    measure: tuple[str, ...]
    whole: str = ""
    coalesce: dict[str, str] = field(default_factory=dict)
    about: str = ""
    #: parameters a state of this type takes in the catalog (e.g. a NAT's port pool)
    params: tuple[ParamSpec, ...] = ()
    #: what a replica-mode proxy caches: the whole state, or single entries (portmap)
    replicas: str = "whole"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # int | number | string
    default: int | float | str | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class CheckerSpec:
    name: str
    types: tuple[str, ...]
    params: tuple[ParamSpec, ...]
    needs: tuple[str, ...] = ()
    alert: str = ""
    about: str = ""


@dataclass(frozen=True)
class LibrarySpec:
    """What the Lua sources offer, read from their headers (no Redis needed)."""

    types: dict[str, TypeSpec]
    checkers: dict[str, CheckerSpec]
    files: tuple[Path, ...]
    version: str


@dataclass(frozen=True)
class Library:
    """The assembled library for one catalog: source to FUNCTION LOAD and its token."""

    source: str
    version: str
    catalog_digest: str

    @property
    def token(self) -> str:
        return f"{self.version}:{self.catalog_digest}"


def source_dirs() -> tuple[Path, Path]:
    """lua/ and checkers/: packaged in the wheel, or at the repository top."""
    pkg = resources.files("cogs")
    lua, chk = pkg / "_lua", pkg / "_checkers"
    if lua.is_dir() and chk.is_dir():
        return Path(str(lua)), Path(str(chk))
    root = Path(__file__).resolve().parents[1]
    lua_dir, chk_dir = root / "lua", root / "checkers"
    if not lua_dir.is_dir():
        raise ConfigError(f"cogs Lua sources not found (looked in {pkg}/_lua and {lua_dir})")
    return lua_dir, chk_dir


def parse_header(text: str) -> dict[str, str]:
    """The ``-- key: value`` lines that open a Lua file (continuations indented)."""
    out: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        m = _HEADER_LINE.match(line)
        if not m:
            break
        if m["key"]:
            last = m["key"]
            out[last] = m["value"].strip()
        elif last and m["cont"]:
            out[last] += " " + m["cont"].strip()
    return out


def _words(s: str) -> tuple[str, ...]:
    return tuple(s.split())


def _parse_param(word: str, where: Path) -> ParamSpec:
    m = re.fullmatch(r"([a-z_]+):(int|number|string)(?:=(.*))?", word)
    if not m:
        raise ConfigError(f"{where}: bad param declaration {word!r} (want name:int|number|string[=default])")
    name, kind, default = m.groups()
    value: int | float | str | None = default
    if default is not None and kind == "int":
        value = int(default)
    elif default is not None and kind == "number":
        value = float(default)
    return ParamSpec(name, kind, value)


def _type_spec(path: Path) -> TypeSpec:
    h = parse_header(path.read_text())
    if "type" not in h:
        raise ConfigError(f"{path}: a type file must open with '-- type: <name>'")
    coalesce = dict(w.split("=", 1) for w in _words(h.get("coalesce", "")))
    return TypeSpec(
        name=h["type"],
        update=_words(h.get("update", "")),
        retrieve=_words(h.get("retrieve", "")),
        check=_words(h.get("check", "")),
        measure=_words(h.get("measure", "")),
        whole=h.get("whole", ""),
        coalesce=coalesce,
        about=h.get("about", ""),
        params=tuple(_parse_param(w, path) for w in _words(h.get("params", ""))),
        replicas=_replicas(h.get("replicas", "whole"), path),
    )


def _replicas(v: str, where: Path) -> str:
    if v not in ("whole", "entries"):
        raise ConfigError(f"{where}: '-- replicas:' must be whole or entries, not {v!r}")
    return v


def _checker_spec(path: Path) -> CheckerSpec:
    h = parse_header(path.read_text())
    if "checker" not in h:
        raise ConfigError(f"{path}: a checker file must open with '-- checker: <name>'")
    return CheckerSpec(
        name=h["checker"],
        types=_words(h.get("types", "")),
        params=tuple(_parse_param(w, path) for w in _words(h.get("params", ""))),
        needs=_words(h.get("needs", "")),
        alert=h.get("alert", ""),
        about=h.get("about", ""),
    )


def _files(extra_dirs: Sequence[Path]) -> tuple[list[Path], list[Path], Path, Path]:
    lua_dir, chk_dir = source_dirs()
    # lua/*.lua besides core and api are shared modules: they go first, like types
    modules = sorted(p for p in lua_dir.glob("*.lua") if p.name not in ("core.lua", "api.lua"))
    types = modules + sorted((lua_dir / "types").glob("*.lua"))
    checkers = sorted(chk_dir.glob("*.lua"))
    for d in extra_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"extra Lua directory {d} does not exist")
        types += sorted(Path(d, "types").glob("*.lua"))
        checkers += sorted(Path(d, "checkers").glob("*.lua"))
    return types, checkers, lua_dir / "core.lua", lua_dir / "api.lua"


def library_spec(extra_dirs: Sequence[Path] | None = None) -> LibrarySpec:
    """What the bundled Lua sources plus ``extra_dirs`` offer; None: the directories
    of the settings (``COGS_LUA_PATHS``), so every catalog check honours them."""
    if extra_dirs is None:
        from cogs.settings import load_settings

        extra_dirs = load_settings().lua_paths
    types, checkers, core, api = _files(extra_dirs)
    tspecs: dict[str, TypeSpec] = {}
    for p in types:
        if p.parent.name != "types":
            continue
        t = _type_spec(p)
        if t.name in tspecs:
            raise ConfigError(f"{p}: type {t.name!r} is defined twice")
        tspecs[t.name] = t
    cspecs: dict[str, CheckerSpec] = {}
    for p in checkers:
        c = _checker_spec(p)
        if c.name in cspecs:
            raise ConfigError(f"{p}: checker {c.name!r} is defined twice")
        cspecs[c.name] = c
    files = (core, *types, *checkers, api)
    digest = hashlib.sha256(lua_constants().encode() + b"\0")  # the protocol's numbers are part of it
    for p in files:
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return LibrarySpec(tspecs, cspecs, files, digest.hexdigest()[:16])


def _long_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def assemble(
    spec: LibrarySpec,
    catalog_json: str,
    catalog_digest: str,
    ns: Namespace = DEFAULT,
    ops_per_s: int | None = None,
    *,
    max_keys: int | None = None,
    max_memory: int | None = None,
) -> Library:
    """The library source for ``spec`` carrying the catalog (canonical JSON), for the NF
    ``ns`` (its library and function names, its key prefix), with the NF's limits per
    primary (None: none). Limits are not part of the catalog's digest: changing them
    does not make running proxies outdated."""
    core, *middle, api = spec.files
    for name, v in (("ops_per_s", ops_per_s), ("max_keys", max_keys), ("max_memory", max_memory)):
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 1 << 53):
            raise ConfigError(f"{name} must be an integer from 1 to 2^53, not {v!r}")
    load = "cogs catalog load" + ("" if ns.default else f" --nf {ns.nf}")
    parts = [
        f"#!lua name={ns.library}",
        f"-- generated by cogs: library {spec.version}, catalog {catalog_digest}, NF {ns.nf}",
        f"local LIB_VERSION = '{spec.version}'",
        f"local CATALOG_DIGEST = '{catalog_digest}'",
        f"local CATALOG_JSON = {_long_string(catalog_json)}",
        f"local LIMIT_OPS_PER_S = {ops_per_s or 0}",
        f"local LIMIT_MAX_KEYS = {max_keys or 0}",
        f"local LIMIT_MAX_BYTES = {max_memory or 0}",
        f"local LOAD_HINT = '{load} PATH'",
        f"local SLOT_TAGS = '{_slot_tags_lua()}'",
        "-- the wire protocol (cogs/protocol.py)",
        lua_constants(ns.prefix, ns.library, ns.nf),
        f"-- {core.name}",
        core.read_text(),
    ]
    for p in middle:
        parts += [f"-- {p.parent.name}/{p.name}", "do", p.read_text(), "end"]
    parts += [f"-- {api.name}", api.read_text()]
    return Library("\n".join(parts), spec.version, catalog_digest)


_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/"


@functools.cache
def _slot_tags_lua() -> str:
    """Every slot's tag (cogs/keys.py slot_tag: decimals below 2^18) as 3 base-64 digits:
    how the library names the records of its node's lowest slot (lua/api.lua, node_tag)."""
    out = []
    for s in range(SLOTS):
        n = int(slot_tag(s))
        assert n < 1 << 18
        out.append(_DIGITS[n >> 12] + _DIGITS[(n >> 6) & 63] + _DIGITS[n & 63])
    return "".join(out)


def describe(spec: LibrarySpec) -> dict[str, object]:
    """JSON-able summary of the library (for `cogs catalog types`)."""
    return {
        "version": spec.version,
        "types": {
            n: {"update": t.update, "retrieve": t.retrieve, "check": t.check, "about": t.about}
            for n, t in spec.types.items()
        },
        "checkers": {
            n: {
                "types": c.types,
                "params": {p.name: p.kind + ("" if p.required else f"={p.default}") for p in c.params},
                "alert": c.alert,
            }
            for n, c in spec.checkers.items()
        },
    }


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
