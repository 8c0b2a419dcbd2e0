"""The `comfyfleet` Typer application and the shared error-to-exit-code shell."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer

from comfyfleet.errors import ComfyfleetError, Interrupted
from comfyfleet.redact import redact_text

app = typer.Typer(
    name="comfyfleet",
    help="Provision rented GPU machines to a verified, running ComfyUI; stream their logs; "
    "keep a warm pool.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
logs_app = typer.Typer(help="Stream remote logs.", no_args_is_help=True)
pool_app = typer.Typer(help="Warm pool of provisioned instances.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
app.add_typer(pool_app, name="pool")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` (secrets redacted) to stderr and exit with ``code``."""
    print(f"error: {redact_text(message)}", file=sys.stderr)
    raise typer.Exit(code)


def emit_json(document: dict[str, Any]) -> None:
    """Print exactly one JSON document to stdout (the `--json` contract)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]], *, resume_hint: str) -> T:
    """Run a coroutine to completion; SIGINT and SIGTERM cancel it cleanly as :class:`Interrupted`.

    Cancellation (not a KeyboardInterrupt at a random bytecode) lets every task clean up:
    part files and sidecars are saved, the run log gets its final line, children are stopped.
    """

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        caught: list[str] = []

        def stop(name: str) -> None:
            caught.append(name)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            return await make()
        except asyncio.CancelledError:
            if caught:
                raise Interrupted(f"stopped by {caught[0]}; {resume_hint}") from None
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


def run(body: Callable[[], int]) -> NoReturn:
    """Run a command body, mapping comfyfleet errors and interrupts to DESIGN.md exit codes."""
    try:
        code = body()
    except Interrupted as exc:
        print(f"interrupted: {redact_text(str(exc))}", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("interrupted: stopped cleanly; run the same command again to resume", file=sys.stderr)
        code = 130
    except ComfyfleetError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    raise typer.Exit(code)
