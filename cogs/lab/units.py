"""Link parameters as people write them (tc's units): ``200us``, ``1.5ms``, ``1gbit``, ``1%``."""

from __future__ import annotations

import re

from cogs.errors import ConfigError

_TIME = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}
_RATE = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6}
_NUM = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"


def parse_us(v: str | float | int, what: str = "time") -> float:
    """Microseconds from ``200us``, ``1.5ms``, ``0.2s`` (a bare number: microseconds)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        us = float(v)
    else:
        m = re.fullmatch(_NUM + r"([a-zµ]*)\s*", str(v).lower())
        if not m or m[2] not in ("", *_TIME):
            raise ConfigError(f"{what} {v!r} is not a duration (e.g. 200us, 1.5ms, 1s)")
        us = float(m[1]) * _TIME.get(m[2], 1.0)
    if not 0 <= us <= 60e6:
        raise ConfigError(f"{what} {v!r} is out of range (0 to 60 s)")
    return us


def parse_rate(v: str | float | int | None, what: str = "rate") -> float | None:
    """Bits per second from ``1gbit``, ``100mbit``, ``10mbps`` (bytes); None or 0: no limit."""
    if v is None:
        return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        bps = float(v)
    else:
        m = re.fullmatch(_NUM + r"([a-z]*)\s*", str(v).lower())
        if not m or m[2] not in ("", *_RATE):
            raise ConfigError(f"{what} {v!r} is not a rate (e.g. 1gbit, 100mbit, 10mbps)")
        bps = float(m[1]) * _RATE.get(m[2], 1)
    if bps == 0:
        return None
    if not 8_000 <= bps <= 400e9:
        raise ConfigError(f"{what} {v!r} is out of range (8kbit to 400gbit)")
    return bps


def parse_loss(v: str | float | int | None, what: str = "loss") -> float:
    """A probability from ``1%`` or ``0.01``."""
    if v is None:
        return 0.0
    s = str(v).strip()
    try:
        p = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ConfigError(f"{what} {v!r} is not a probability (e.g. 1% or 0.01)") from None
    if not 0 <= p <= 1:
        raise ConfigError(f"{what} {v!r} is out of range (0 to 100%)")
    return p


def fmt_us(us: float) -> str:
    return f"{us / 1e3:g}ms" if us >= 1000 else f"{us:g}us"


def fmt_rate(bps: float | None) -> str:
    if not bps:
        return "unlimited"
    for unit, f in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= f:
            return f"{bps / f:g}{unit}"
    return f"{bps:g}bit"
