"""Python values for what the Lua library returns, by type and op.

Redis replies arrive as bytes, integers and flat arrays; a retrieve of a set should
give a ``set[str]``, of a map a ``dict[str, str]``, of a counter an ``int``. Types
added by users fall back to a generic decoding (bytes -> str, arrays -> lists).
"""

from __future__ import annotations

from collections.abc import Callable
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


_RETRIEVE: dict[tuple[str, str], Decoder] = {
    ("int", "get"): _int,
    ("string", "get"): _str,
    ("string", "len"): _count,
    ("set", "members"): _strset,
    ("set", "card"): _count,
    ("set", "contains"): _bool,
    ("map", "all"): _strmap,
    ("map", "field"): _str,
    ("map", "len"): _count,
    ("hll", "count"): _count,
}
_GENERIC_RETRIEVE: dict[str, Decoder] = {"exists": _bool, "ttl": _int}


def retrieve_decoder(type_name: str, op: str) -> Decoder:
    return _RETRIEVE.get((type_name, op)) or _GENERIC_RETRIEVE.get(op) or generic


def check_decoder() -> Decoder:
    return _bool
