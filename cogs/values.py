"""The Python side of each state type: a per-type adapter registry.

A type is one Lua file (lua/types/, or a directory in ``COGS_LUA_PATHS``) whose header
declares its ops, how pending updates coalesce (``-- coalesce: add=sum``) and what a
replica holds (``-- replicas: whole|entries``). What the Python side needs beyond
that lives in a :class:`TypeAdapter`: how to decode each op's reply (a set's members
as ``set[str]``, a counter as ``int``), and, if the header does not say it, how
updates coalesce and what replicas hold. Types without an adapter get generic
decoding (bytes -> str, arrays -> lists) and the header's declarations::

    from cogs import TypeAdapter, register_type_adapter
    register_type_adapter("fmax", TypeAdapter(decoders={"get": lambda v: None if v is None else float(v)}))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Decoder = Callable[[Any], Any]


def _str(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _count(v: Any) -> int:
    return 0 if v is None else int(v)


def _bool(v: Any) -> bool:
    return bool(v)


def _strset(v: Any) -> set[str]:
    return {x.decode() for x in v} if v else set()


def _strmap(v: Any) -> dict[str, str]:
    if not v:
        return {}
    it = iter(v)
    return {k.decode(): x.decode() for k, x in zip(it, it, strict=True)}


def generic(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [generic(x) for x in v]
    return v


@dataclass(frozen=True)
class TypeAdapter:
    #: retrieve op -> decoder of its reply (an op not named: generic decoding)
    decoders: Mapping[str, Decoder] = field(default_factory=dict)
    #: update op -> "sum" | "union" | "mapsum": overrides the Lua header's ``-- coalesce:``
    coalesce: Mapping[str, str] | None = None
    #: "whole" | "entries": overrides the Lua header's ``-- replicas:``
    replicas: str | None = None


_ADAPTERS: dict[str, TypeAdapter] = {
    "int": TypeAdapter({"get": _int}),
    "string": TypeAdapter({"get": _str, "len": _count}),
    "set": TypeAdapter({"members": _strset, "card": _count, "contains": _bool}),
    "map": TypeAdapter({"all": _strmap, "field": _str, "len": _count}),
    "hll": TypeAdapter({"count": _count}),
}
_GENERIC_RETRIEVE: dict[str, Decoder] = {"exists": _bool, "ttl": _int}
_NONE = TypeAdapter()


def register_type_adapter(type_name: str, adapter: TypeAdapter) -> None:
    """Use ``adapter`` for ``type_name`` in this process (before proxies open)."""
    if adapter.replicas not in (None, "whole", "entries"):
        raise ValueError(f"type {type_name}: replicas must be 'whole' or 'entries', not {adapter.replicas!r}")
    _ADAPTERS[type_name] = adapter


def type_adapter(type_name: str) -> TypeAdapter:
    return _ADAPTERS.get(type_name, _NONE)


def retrieve_decoder(type_name: str, op: str) -> Decoder:
    return type_adapter(type_name).decoders.get(op) or _GENERIC_RETRIEVE.get(op) or generic


def check_decoder() -> Decoder:
    return _bool
