"""Locks per key that exist only while someone holds or awaits them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Hashable

import anyio


class KeyLocks:
    """``async with locks.hold(key):`` serializes the blocks of one key (in arrival
    order); a map of a lock per key ever seen would grow without bound."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, anyio.Lock] = {}

    def busy(self, key: Hashable) -> bool:
        lock = self._locks.get(key)
        return lock is not None and lock.locked()

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting and self._locks.get(key) is lock:
                del self._locks[key]
