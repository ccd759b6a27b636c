"""The state catalog: every global state an NF cluster uses, declared in TOML.

    [states.scan_ports]           # name
    class = "trigger"             # trigger | direct | indirect
    type = "set"                  # a type of the Lua library (int, string, set, map, hll, ...)
    window = "5m"                 # trigger states: reset this long after creation
    checker = "cardinality"       # run at the coordinator after every update
    params = { threshold = 15 }

    [limits]                      # optional: this NF's limits (several NFs share a cluster)
    ops_per_s = 50000             # per primary: ops over it are refused (LIMIT)
    max_keys = 1000000            # per primary: state entries; new ones over it refused
    max_memory = "256MiB"         # per primary: every key of the NF; updates over it refused

The catalog is compiled into the Lua library (see cogs/library.py), so what
the coordinator stores is exactly what every proxy and every script agree on; its
digest travels with every batch.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from cogs.errors import CatalogError
from cogs.library import LibrarySpec, ParamSpec, canonical_json, library_spec

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(v: object) -> int | None:
    """Seconds (number) or a string with a unit (``250ms``, ``30s``, ``5m``) -> ms."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError("a duration cannot be a boolean")
    if isinstance(v, int | float):
        ms = float(v) * 1000
    elif isinstance(v, str) and (m := _DURATION_RE.match(v)):
        ms = float(m[1]) * _UNITS[m[2] or "s"]
    else:
        raise ValueError(f"{v!r} is not a duration (use seconds or e.g. '250ms', '30s', '5m', '1h')")
    if ms < 1 or ms > 366 * _UNITS["d"]:
        raise ValueError(f"{v!r} is out of range (1 ms to 366 days)")
    return int(ms)


Duration = Annotated[int | None, BeforeValidator(parse_duration)]


class StateSpec(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME_RE.pattern)
    state_class: Literal["trigger", "direct", "indirect"] = Field(alias="class")
    type: str = "blob"
    mode: Literal["singleton", "replica"] = "singleton"
    window: Duration = None
    ttl: Duration = None
    checker: str | None = None
    params: dict[str, int | float | str] = Field(default_factory=dict)
    max_bytes: int = Field(1 << 20, ge=1, le=512 << 20)
    #: a set member or a map field: far below a value (they come from packets: a hostile one must stay small)
    max_member_bytes: int = Field(4096, ge=64, le=1 << 20)
    #: a set or map without one holds at most DEFAULT_MAX_ITEMS (cogs/protocol.py), checked on write and read
    max_items: int | None = Field(None, ge=1)
    description: str = ""

    def wire(self) -> dict[str, Any]:
        """What the Lua library is told about this state (canonical JSON)."""
        return {
            "name": self.name,
            "class": self.state_class,
            "type": self.type,
            "mode": self.mode,
            "window_ms": self.window,
            "ttl_ms": self.ttl,
            "checker": self.checker,
            "params": self.params,
            "max_bytes": self.max_bytes,
            "max_member_bytes": self.max_member_bytes,
            "max_items": self.max_items,
        }


#: the names of the library's own keys under the NF's prefix (<prefix><name>:{tag}, ...):
#: a state of one of these names could have an entry on top of them
RESERVED_NAMES = frozenset(
    {"alerts", "once", "held", "limit", "created", "proxy", "proxies", "janitor", "discard", "nfs"}
)

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_size(v: object) -> int | None:
    """Bytes (integer) or a string with a unit (``64MiB``, ``1.5GB``, ``500kb``) -> bytes."""
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"{v!r} is not a size (use bytes or e.g. '64MiB', '2GB')")
    if isinstance(v, int):
        return v
    m = _SIZE_RE.match(v.lower())
    if not m or m[2] not in _SIZE_UNITS:
        raise ValueError(f"{v!r} is not a size (use bytes or e.g. '64MiB', '2GB'; units {', '.join(_UNITS_SHOWN)})")
    return int(float(m[1]) * _SIZE_UNITS[m[2]])


_UNITS_SHOWN = ("B", "kB", "MB", "GB", "KiB", "MiB", "GiB")
Size = Annotated[int | None, BeforeValidator(parse_size)]


class Limits(BaseModel):
    """An NF's limits, enforced by its library on every primary. Not part of the
    catalog's digest: changing them does not make running proxies outdated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ops per second per primary (a token bucket in Lua on each node); None: no limit
    ops_per_s: int | None = Field(default=None, ge=1, le=100_000_000)
    #: state entries per primary: an op that would create one more is refused
    #: (counted by the keeper, cogs/keeper.py, plus what the library created since)
    max_keys: int | None = Field(default=None, ge=1, le=1 << 40)
    #: bytes per primary (MEMORY USAGE of every key of the NF, by the keeper, plus an
    #: estimate of what was created since): updates are refused while over it
    max_memory: Size = Field(default=None, ge=1 << 10, le=1 << 50)

    @property
    def usage(self) -> bool:
        """Whether a limit needs the keeper's count."""
        return self.max_keys is not None or self.max_memory is not None

    def shown(self) -> str:
        """One line, e.g. ``50,000 ops/s, 1,000,000 keys, 256.0 MiB per primary``."""
        parts = [f"{self.ops_per_s:,} ops/s"] if self.ops_per_s else []
        parts += [f"{self.max_keys:,} keys"] if self.max_keys else []
        parts += [f"{self.max_memory / (1 << 20):,.1f} MiB"] if self.max_memory else []
        return ", ".join(parts) + " per primary" if parts else "none"


class Catalog:
    """A validated set of states; index order (by name) is the wire order."""

    def __init__(self, states: list[StateSpec], spec: LibrarySpec, limits: Limits | None = None) -> None:
        self.states: tuple[StateSpec, ...] = tuple(sorted(states, key=lambda s: s.name))
        self.spec = spec
        self.limits = limits or Limits()
        self._index = {s.name: i + 1 for i, s in enumerate(self.states)}

    def __iter__(self) -> Iterator[StateSpec]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """1-based wire index of ``name``."""
        return self._index[name]

    def get(self, name: str) -> StateSpec:
        return self.states[self._index[name] - 1]

    @cached_property
    def json(self) -> str:
        return canonical_json({"states": [s.wire() for s in self.states]})

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.json.encode()).hexdigest()[:16]

    # -- loading -------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], spec: LibrarySpec | None = None, source: str = "catalog") -> Catalog:
        spec = spec or library_spec()
        problems: list[str] = []
        unknown = sorted(set(data) - {"states", "description", "limits"})
        if unknown:
            problems.append(f"unknown top-level key(s) {unknown}; expected [states.<name>] tables and [limits]")
        limits = _limits(data.get("limits", {}), problems)
        raw = data.get("states", {})
        if not isinstance(raw, Mapping) or not raw:
            problems.append("no states: declare at least one [states.<name>] table")
            raw = {}
        states: list[StateSpec] = []
        for name, entry in raw.items():
            if not isinstance(entry, Mapping):
                problems.append(f"state {name!r}: must be a table, got {type(entry).__name__}")
                continue
            try:
                st = StateSpec.model_validate({**entry, "name": name})
            except ValidationError as e:
                for err in e.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    problems.append(f"state {name!r}: {loc}: {err['msg']}")
                continue
            found = _semantic_problems(st, spec)
            if name in RESERVED_NAMES:
                found.append(f"the name is the library's own (reserved: {', '.join(sorted(RESERVED_NAMES))})")
            problems += [f"state {name!r}: {p}" for p in found]
            if not found:
                states.append(st.model_copy(update={"params": _with_defaults(st, spec)}))
        if problems:
            raise CatalogError(problems, source)
        return cls(states, spec, limits)

    @classmethod
    def from_toml(cls, text: str, spec: LibrarySpec | None = None, source: str = "catalog") -> Catalog:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CatalogError([f"not valid TOML: {e}"], source) from e
        return cls.from_mapping(data, spec, source)

    @classmethod
    def from_file(cls, path: str | Path, spec: LibrarySpec | None = None) -> Catalog:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise CatalogError([f"cannot read: {e.strerror}"], str(p)) from e
        return cls.from_toml(text, spec, str(p))

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any], spec: LibrarySpec | None = None) -> Catalog:
        """Rebuild from the canonical form the coordinator stores (``cogs_info``)."""
        states: dict[str, dict[str, Any]] = {}
        for s in obj["states"]:
            entry = {k: v for k, v in s.items() if v is not None and k != "name"}
            for ms_key, key in (("window_ms", "window"), ("ttl_ms", "ttl")):
                if ms_key in entry:
                    entry[key] = f"{entry.pop(ms_key)}ms"
            if not entry.get("params"):
                entry.pop("params", None)
            states[s["name"]] = entry
        return cls.from_mapping({"states": states}, spec, "stored catalog")


def _limits(raw: object, problems: list[str]) -> Limits:
    if not isinstance(raw, Mapping):
        problems.append(f"[limits] must be a table, got {type(raw).__name__}")
        return Limits()
    try:
        return Limits.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            have = " (have: ops_per_s, max_keys, max_memory)" if err["type"] == "extra_forbidden" else ""
            problems.append(f"limits.{loc}: {err['msg']}{have}")
        return Limits()


def catalog_diff(stored: Catalog, given: Catalog) -> str:
    """One line saying how two catalogs differ."""
    a = {s.name: s.wire() for s in stored}
    b = {s.name: s.wire() for s in given}
    parts = []
    if only := sorted(set(a) - set(b)):
        parts.append(f"only stored: {', '.join(only)}")
    if only := sorted(set(b) - set(a)):
        parts.append(f"only given: {', '.join(only)}")
    for name in sorted(set(a) & set(b)):
        fields = sorted(k for k in a[name] if a[name][k] != b[name][k])
        if fields:
            parts.append(f"{name} differs in {', '.join(fields)}")
    return "; ".join(parts) or "same states, different encoding"


def _semantic_problems(st: StateSpec, spec: LibrarySpec) -> list[str]:
    """Checks that need the library: types, checkers and their params."""
    out: list[str] = []
    if st.state_class == "indirect":
        if st.type != "blob":
            out.append(f"indirect states hold opaque values on middleboxes: type must be 'blob', not {st.type!r}")
    elif st.type not in spec.types:
        out.append(f"type {st.type!r} is not in the library (known: {', '.join(sorted(spec.types))})")
    if st.state_class == "trigger":
        if st.mode != "singleton":
            out.append("trigger states are centralized: mode must be 'singleton'")
        if st.ttl is not None:
            out.append("trigger states take 'window' (reset after creation), not 'ttl'")
    else:
        if st.window is not None:
            out.append(f"'window' is for trigger states; {st.state_class} states take 'ttl' (idle expiry)")
        if st.checker is not None:
            out.append(f"checkers run on trigger states only, not on {st.state_class} states")
    tspec = spec.types.get(st.type)
    if st.checker is None:
        if tspec is not None and tspec.params:
            return out + _param_problems(f"type {st.type!r}", tspec.params, st.params)
        if st.params:
            out.append("'params' given without a checker (or a type that takes parameters)")
        return out
    if tspec is not None and tspec.params:
        out.append(f"type {st.type!r} takes parameters of its own: it cannot have a checker")
        return out
    chk = spec.checkers.get(st.checker)
    if chk is None:
        out.append(f"checker {st.checker!r} is not in the library (known: {', '.join(sorted(spec.checkers))})")
        return out
    if st.type not in chk.types:
        out.append(f"checker {st.checker!r} works on {', '.join(chk.types)} states, not {st.type!r}")
    if "window" in chk.needs and st.window is None:
        out.append(f"checker {st.checker!r} needs a 'window' on its state")
    return out + _param_problems(f"checker {st.checker!r}", chk.params, st.params)


def _param_problems(owner: str, declared: tuple[ParamSpec, ...], given: Mapping[str, object]) -> list[str]:
    out = []
    names = {p.name for p in declared}
    for name in sorted(set(given) - names):
        out.append(f"{owner} has no parameter {name!r} (has: {', '.join(p.name for p in declared)})")
    for p in declared:
        if p.name not in given:
            if p.required:
                out.append(f"{owner} needs parameter {p.name!r} ({p.kind})")
            continue
        v = given[p.name]
        ok = (
            (p.kind == "int" and isinstance(v, int) and not isinstance(v, bool))
            or (p.kind == "number" and isinstance(v, int | float) and not isinstance(v, bool))
            or (p.kind == "string" and isinstance(v, str))
        )
        if not ok:
            out.append(f"{owner} parameter {p.name!r} must be {p.kind}, got {v!r}")
    return out


def _with_defaults(st: StateSpec, spec: LibrarySpec) -> dict[str, int | float | str]:
    """Checker (or type) parameters with the declared defaults filled in (Lua reads them all)."""
    if st.checker is not None:
        declared = spec.checkers[st.checker].params
    else:
        tspec = spec.types.get(st.type)
        declared = tspec.params if tspec is not None else ()
    full = dict(st.params)
    for p in declared:
        if p.default is not None:
            full.setdefault(p.name, p.default)
        if p.kind == "number" and p.name in full:
            full[p.name] = float(full[p.name])  # 5 and 5.0 must give one digest
    return full
