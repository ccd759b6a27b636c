"""What every ``cogs`` subcommand shares: the top group, error handling, output, options.

Exit codes: 0 success, 1 an operation failed (one clear line on stderr),
2 bad usage or configuration, 3 the coordinator is unreachable.
"""

from __future__ import annotations

import inspect
import re
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.markup import escape

from cogs import logs, runtime
from cogs.errors import CogsError, ConfigError, CoordinatorUnavailable
from cogs.extras import missing_extra_message
from cogs.logs import FORMATS, LEVELS

T = TypeVar("T")
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console()


def summary(cmd: click.Command) -> str:
    """What a command does, for its group's list: ``short_help``, else the first
    sentence of its help, whole (click would cut it at 45 characters, or at the dot
    of "Fig. 12"); the help formatter wraps it."""
    if cmd.short_help:
        return inspect.cleandoc(cmd.short_help)
    para = inspect.cleandoc(cmd.help or "").split("\n\n")[0].replace("\n", " ")
    m = re.search(r"\.(?=\s+[A-Z`(]|$)", para)  # a dot that ends a sentence, not "Fig. 12"
    return para[: m.end()] if m else para


class CogsGroup(click.Group):
    """Turns cogs errors into one line on stderr and a meaningful exit code (messages
    are escaped: a catalog's ``[states.x]`` or an extra's ``[nf]`` is not rich markup);
    lists subcommands with their whole summary (wrapped, never cut)."""

    group_class = type  # subgroups (cogs nf, cogs bench, ...) are CogsGroups too

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, summary(cmd)))
        if not rows:
            return
        col = min(max(len(name) for name, _ in rows), 30) + 2
        with formatter.section("Commands"):
            pad = " " * formatter.current_indent
            width = max(formatter.width - formatter.current_indent - col, 20)
            for name, text in rows:  # click's layout, but never a word split at a hyphen
                lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]
                formatter.write(f"{pad}{name:<{col}}{lines[0]}\n")
                for line in lines[1:]:
                    formatter.write(f"{pad}{' ' * col}{line}\n")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CoordinatorUnavailable as e:
            err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            sys.exit(3)
        except ConfigError as e:
            err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            sys.exit(2)
        except CogsError as e:
            err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            sys.exit(1)
        except redis.ConnectionError as e:
            err_console.print(f"[red]error:[/] coordinator unreachable: {escape(str(e))}", highlight=False)
            sys.exit(3)
        except redis.RedisError as e:
            err_console.print(f"[red]error:[/] coordinator refused: {escape(str(e))}", highlight=False)
            sys.exit(1)
        except ModuleNotFoundError as e:  # an optional dependency a base install leaves out
            msg = missing_extra_message(e)
            if msg is None:
                raise
            err_console.print(f"[red]error:[/] {escape(msg)}", highlight=False)
            sys.exit(2)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return runtime.run(fn)
    except KeyboardInterrupt:
        sys.exit(130)


STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def hold_stop_signals() -> None:
    """Hold SIGINT/SIGTERM until ``_until_signal`` has its handlers in place: a command
    that serves (a port) before its event loop runs would otherwise be killed by a
    SIGTERM that came in between, instead of stopping cleanly (exit 0)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


async def _until_signal(fn: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``fn`` until it returns or SIGINT/SIGTERM comes; True if a signal ended it.
    A cancel scope, not asyncio's one-shot task cancel: a library that swallows one
    cancellation (a redis connect under way) is cancelled again at its next await."""
    import anyio
    import anyio.abc

    stopped = False
    async with anyio.create_task_group() as tg:

        async def on_signal(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            nonlocal stopped
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for _ in signals:
                    stopped = True
                    tg.cancel_scope.cancel()
                    return

        await tg.start(on_signal)  # the handlers are in place before fn runs
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one held since hold_stop_signals() comes now
        await fn()
        tg.cancel_scope.cancel()
    return stopped


def _progress(msg: str) -> None:
    err_console.print(f"[dim]·[/] {msg}", highlight=False)


url_option = click.option(
    "--url",
    envvar="COGS_URL",
    help="Any coordinator node (default: COGS_URL or the local cluster).",
)
#: the NF a command works for, on a cluster several NFs share (cogs/keys.py)
nf_option = click.option(
    "--nf",
    envvar="COGS_NF",
    help="The NF (its own keys, catalog, library, ACL users) on a cluster several share (default: COGS_NF, "
    "else the default NF).",
)


@click.group(cls=CogsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cogs-nf")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr: -v info, -vv debug.")
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    envvar="COGS_LOG_LEVEL",
    help="Log level (default warning; wins over -v). Env: COGS_LOG_LEVEL.",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS, case_sensitive=False),
    default="text",
    show_default=True,
    envvar="COGS_LOG_FORMAT",
    help="text, or json: one object per line with ts, level, logger, msg and fields (proxy, node, state, ...). "
    "Env: COGS_LOG_FORMAT.",
)
def main(verbose: int, log_level: str | None, log_format: str) -> None:
    """cogs: global states of network functions, coordinated on Redis Cluster.

    Logging options go before the command (`cogs -v nf run ...`) and reach the
    processes it starts (middleboxes, web cache nodes). Shell completion (bash, zsh,
    fish): see the README, e.g. `eval "$(_COGS_COMPLETE=bash_source cogs)"`.
    """
    logs.configure(logs.level_of(verbose, log_level), log_format)
