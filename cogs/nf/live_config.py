"""What every live worker is given, apart from the workers themselves: the NAT
forwarder (:mod:`cogs.nf.live_nat`) and the worker loop (:mod:`cogs.nf.live`) both read it."""

from __future__ import annotations

from dataclasses import dataclass

BATCH = 256  # frames read per turn before the proxy's loop gets a turn
ROOM = 16 * BATCH  # proxy room the next turn may need (a packet issues a few updates)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


@dataclass
class LiveConfig:
    """What every worker of a run is given (picklable: workers are spawned)."""

    nf: str
    interface: str
    url: str
    namespace: str = ""
    group: int | None = None
    out_interface: str | None = None  # nat: where translated packets go
    nat_state: str = "nat"
    nat_mode: str = "async"
    internal: tuple[str, ...] = ()
