"""What every ``cogs`` subcommand shares: the top group, error handling, output, options.

Exit codes: 0 success, 1 an operation failed (one clear line on stderr),
2 bad usage or configuration, 3 the coordinator is unreachable.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.markup import escape

from cogs import runtime
from cogs.errors import CogsError, ConfigError, CoordinatorUnavailable
from cogs.extras import missing_extra_message

T = TypeVar("T")
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console()


class CogsGroup(click.Group):
    """Turns cogs errors into one line on stderr and a meaningful exit code (messages
    are escaped: a catalog's ``[states.x]`` or an extra's ``[nf]`` is not rich markup)."""

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


async def _until_signal(fn: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``fn`` until it returns or SIGINT/SIGTERM comes; True if a signal ended it.
    A cancel scope, not asyncio's one-shot task cancel: a library that swallows one
    cancellation (a redis connect under way) is cancelled again at its next await."""
    import signal

    import anyio

    stopped = False
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            nonlocal stopped
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stopped = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
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


@click.group(cls=CogsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cogs-nf")
def main() -> None:
    """cogs: global states of network functions, coordinated on Redis Cluster."""
