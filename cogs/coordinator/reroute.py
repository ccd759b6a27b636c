"""What to do with an op a node answered MOVED or ASK (its slot moved, or is moving).

One policy for every path to the coordinator (the proxy's batcher and StateTable):
re-read the slot map and send the op again, every ``delay`` seconds while the slot
is half moved, until ``timeout`` seconds after it was first refused; then it fails
with a :class:`~cogs.errors.Moved` error naming it (a migration that never completes
must not hold a caller forever).
"""

from __future__ import annotations

from dataclasses import dataclass

from cogs.errors import Moved


@dataclass(frozen=True)
class Reroute:
    timeout: float = 30.0
    delay: float = 0.01

    def expired(self, first: float, now: float) -> bool:
        """An op first refused at ``first`` (monotonic s; 0: just now) is given up."""
        return bool(first) and now - first > self.timeout

    def gave_up(self, err: Moved, *, state: str, key: str, op: str) -> Moved:
        return Moved(
            f"its slot's node kept refusing it for {self.timeout:g} s (a slot migration that does not complete?): "
            f"{err}",
            state=state, key=key, op=op,
        )  # fmt: skip
