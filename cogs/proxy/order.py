"""Per-key order between the two paths ops take to a frame, and across slot moves.

A frame carries lane ops first, then requests in arrival order (lanes.encode). That
is the issue order of a key's ops as long as every lane op of the key is older than
every queued request of it. Two things break that, and are handled here:

* a request queued for a key **fences** the key in its lane: lane ops pending now
  stay (they are older, they go first), later ones of the key join the request queue
  behind it (:func:`fence`; the lane keeps a marker group, ``op`` None, that sends
  the slow path there, and the hot path never looks at a key in ``pending``);
* an op re-queued after ``MOVED``/``ASK`` is older than anything pending: the key's
  lane ops go behind it into the queue, and the key is fenced (:func:`seal`).

Across channels, ops of slots that moved must not reach the new owner before the
ops still on their way to the old one (:func:`moved_from` names the channels to wait
for; the batcher holds new frames until what they carried has settled).
"""

from __future__ import annotations

from array import array
from typing import Any

from cogs.protocol import Mode
from cogs.proxy.lanes import MAPSUM, NONE, SUM, UNION, Lane
from cogs.proxy.requests import Req

#: a lane's marker group: ops of the key after it go to the request queue
MARK = (None, NONE, None)


def fence(lane: Lane, key: str) -> None:
    """Later lane ops of ``key`` go to the request queue (behind what is there now)."""
    g = lane.pending.get(key)
    if g is not None:
        if g[-3] is not None:
            g += MARK
        return
    v = lane.hot.pop(key, None)
    if v is None:
        lane.pending[key] = list(MARK)
    else:  # the hot op stays pending, in group form, before the marker
        lane.pending[key] = [lane.hot_op, lane.hot_kind, {v} if type(v) is str else v, *MARK]


def seal(lane: Lane, key: str) -> list[Req]:
    """Take ``key``'s pending lane ops out, in order, as requests (nobody waits for
    them), and fence the key."""
    out: list[Req] = []
    v = lane.hot.pop(key, None)
    if v is not None:
        out.append(as_request(lane, key, lane.hot_op, lane.hot_kind, {v} if type(v) is str else v))
    g = lane.pending.get(key)
    for j in range(0, len(g) if g else 0, 3):
        assert g is not None
        if g[j] is not None:
            out.append(as_request(lane, key, g[j], g[j + 1], g[j + 2]))
    lane.pending[key] = list(MARK)
    return out


def as_request(lane: Lane, key: str, op: Any, kind: int, acc: Any) -> Req:
    """A lane op (its accumulated delta) as a request nobody waits for: the argument
    as the frame's run would carry it."""
    if kind == SUM:
        arg: Any = str(acc)
    elif kind == UNION:
        arg = acc if type(acc) is str else (next(iter(acc)) if len(acc) == 1 else sorted(acc))
    elif kind == MAPSUM:
        arg = {f: str(n) for f, n in acc.items()}
    else:
        arg = acc
    return Req(Mode.UPDATE, lane.name, lane.sidx, key, op, arg, None)


def moved_from(
    old_owner: array[int], old_streams: list[str], new_owner: array[int], new_streams: list[str]
) -> set[str]:
    """The channels (streams) that serve slots in the old map which another channel
    serves in the new one: ops still on their way there may come back MOVED."""
    if old_streams == new_streams and old_owner == new_owner:
        return set()
    out: set[str] = set()
    for a, b in zip(old_owner, new_owner, strict=True):
        old = old_streams[a]
        if old != new_streams[b]:
            out.add(old)
            if len(out) == len(old_streams):
                break
    return out
