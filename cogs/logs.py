"""Logging for every cogs process: a level, text or JSON lines, structured fields.

``configure(level, fmt)`` sets up the ``cogs`` logger once per process (the CLI's
``-v`` / ``--log-level`` / ``--log-format``) and exports the choice as
``COGS_LOG_LEVEL`` / ``COGS_LOG_FORMAT``, so processes cogs starts (NF middleboxes,
web cache nodes: spawned, not forked) log the same way: they call
``configure_from_env()``. An NF embedding a proxy configures logging as it likes;
cogs only ever logs through ``logging.getLogger("cogs...")``.

Structured fields: pass ``extra=fields(proxy=..., node=..., state=...)``; the JSON
format writes them as keys, the text format as ``key=value`` after the message.
Proxies never log one line per packet: repeated errors are rate-limited where they
are raised (the first ten, then one in a thousand, with the count: see
``StateProxy._log_error``); servers that log per request (the web cache) use
:class:`Throttle`: a few lines per kind per minute, the rest counted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
#: the structured fields cogs attaches (``extra=``), in output order
FIELDS = ("proxy", "node", "state", "key", "op", "peer", "box", "count")
_HANDLER_MARK = "_cogs_handler"


def fields(**kw: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the given structured fields that are not None."""
    return {k: v for k, v in kw.items() if v is not None}


class Throttle:
    """Repeated log lines, bounded: per kind (a fixed string of the caller's, never
    input), at most ``burst`` lines per ``period_s``; the others are counted, and the
    next line that passes says how many of its kind were left out."""

    def __init__(self, burst: int = 5, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.period_s, self.clock = burst, period_s, clock
        self._kinds: dict[str, list[float]] = {}  # kind -> [window start, lines in it, left out]
        self.left_out = 0

    def allow(self, kind: str) -> int | None:
        """None: leave this line out (counted); else how many lines of ``kind`` were
        left out since the last one shown (0: none)."""
        now = self.clock()
        k = self._kinds.setdefault(kind, [now, 0, 0])
        if now - k[0] >= self.period_s:
            k[0], k[1] = now, 0
        if k[1] >= self.burst:
            k[2] += 1
            self.left_out += 1
            return None
        k[1] += 1
        n, k[2] = int(k[2]), 0
        return n

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, *args: Any, **kw: Any) -> None:
        """``logger.log(level, msg, *args)`` unless ``kind`` is over its budget."""
        n = self.allow(kind)
        if n is None or not logger.isEnabledFor(level):
            return
        if n:
            msg, args = f"{msg} (%d similar lines left out)", (*args, n)
        logger.log(level, msg, *args, **kw)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (epoch seconds), time (ISO 8601, UTC), level,
    logger, msg, then the structured fields and, for an exception, its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for k in FIELDS:
            v = record.__dict__.get(k)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` (fields in FIELDS order)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={record.__dict__[k]}" for k in FIELDS if record.__dict__.get(k) is not None)
        if not extra:
            return line
        head, nl, rest = line.partition("\n")  # fields on the message line, before a traceback
        return f"{head} {extra}{nl}{rest}"


class _Stderr:
    """Whatever ``sys.stderr`` is when a record is written (a test runner swaps it)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def level_of(verbose: int, level: str | None) -> str:
    """``--log-level`` wins; else -v is info, -vv debug; else warning."""
    if level:
        return level
    return "debug" if verbose >= 2 else "info" if verbose == 1 else "warning"


def configure(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log ``cogs.*`` records at ``level`` and above to ``stream`` (stderr) in ``fmt``;
    replaces what an earlier call set up, leaves other handlers alone."""
    level, fmt = level.lower(), fmt.lower()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: must be one of {', '.join(FORMATS)}")
    logger = logging.getLogger("cogs")
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or _Stderr())
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    os.environ["COGS_LOG_LEVEL"], os.environ["COGS_LOG_FORMAT"] = level, fmt


def configured() -> bool:
    return any(getattr(h, _HANDLER_MARK, False) for h in logging.getLogger("cogs").handlers)


def configure_from_env() -> None:
    """In a process cogs started: the parent's choice, if it made one (and nothing
    in this process did yet)."""
    if configured():
        return
    level, fmt = os.environ.get("COGS_LOG_LEVEL"), os.environ.get("COGS_LOG_FORMAT")
    if level or fmt:
        try:
            configure(level or "warning", fmt or "text")
        except ValueError as e:
            print(f"cogs: ignoring bad logging settings: {e}", file=sys.stderr)
