"""The values a proxy owns (indirect states), least recently used first, within a
byte budget: past it the least recently used values go (indirect.py tells the
coordinator, so nobody is sent here for them any more)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

Key = tuple[int, str]  # (state index, key)


@dataclass
class Entry:
    #: None while the value is being loaded by this proxy (``read_through``)
    value: bytes | None
    version: int
    expires: float  # monotonic seconds, 0: never
    #: set when a value being loaded is in place, or was given up, or not claimed after all
    loaded: anyio.Event | None = None
    #: the claim to load it was lost: another proxy owns the key
    lost: bool = False
    #: ownership known current (False after the proxy's lease lapsed: re-checked before serving)
    confirmed: bool = True

    async def wait(self, patience: float) -> bytes | None:
        """The value, once loaded (None if it was given up or took over ``patience`` s)."""
        if self.value is None and self.loaded is not None:
            with anyio.move_on_after(patience):
                await self.loaded.wait()
        return self.value


def _size(e: Entry) -> int:
    return len(e.value) if e.value is not None else 0


class OwnedValues:
    """key -> Entry in recency order, with the bytes of the values held counted."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: OrderedDict[Key, Entry] = OrderedDict()

    def get(self, k: Key) -> Entry | None:
        return self._d.get(k)

    def touch(self, k: Key) -> None:
        """``k`` was just used: it goes last."""
        if k in self._d:
            self._d.move_to_end(k)

    def __setitem__(self, k: Key, e: Entry) -> None:
        old = self._d.pop(k, None)
        self.bytes += _size(e) - (_size(old) if old is not None else 0)
        self._d[k] = e

    def pop(self, k: Key, default: None = None) -> Entry | None:
        e = self._d.pop(k, default)
        if e is not None:
            self.bytes -= _size(e)
        return e

    def __delitem__(self, k: Key) -> None:
        self.pop(k)

    def __contains__(self, k: object) -> bool:
        return k in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._d))

    def items(self) -> list[tuple[Key, Entry]]:
        return list(self._d.items())

    def set_value(self, k: Key, e: Entry, value: bytes) -> None:
        """``e`` (held under ``k``, or not held any more) now has ``value``."""
        if self._d.get(k) is e:
            self.bytes += len(value) - _size(e)
            self._d.move_to_end(k)
        e.value = value

    def over_budget(self) -> list[tuple[Key, Entry]]:
        """Take out the least recently used values until the rest fit the budget; a
        value over the whole budget goes first (it would empty the store for nothing).
        Entries still being loaded hold no bytes yet and stay."""
        out: list[tuple[Key, Entry]] = []
        if self.bytes <= self.max_bytes:
            return out
        for k in [k for k, e in self._d.items() if _size(e) > self.max_bytes]:
            out.append((k, self._d[k]))
            self.pop(k)
        for k in list(self._d):
            if self.bytes <= self.max_bytes:
                break
            e = self._d[k]
            if e.value is not None:
                self.pop(k)
                out.append((k, e))
        return out
