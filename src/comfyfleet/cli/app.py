"""The `comfyfleet` Typer application and the one shell every command body runs in.

:func:`run` maps comfyfleet errors and interrupts to DESIGN.md's exit codes, turns anything
else (a bug) into one line plus a traceback file, and keeps the ``--json`` contract: exactly
one document on stdout, whatever happened. :func:`run_async` is the one cancellation path:
SIGINT and SIGTERM cancel the coroutine, which cleans up and ends as exit 130.

This module imports no heavy library (asyncio included): ``--help``, ``status`` and ``stop``
must start fast, so each command imports what it needs when it runs.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from comfyfleet.errors import (
    ComfyfleetError,
    Interrupted,
    UsageError,
    internal_error,
    known_error,
    one_line,
)
from comfyfleet.names import escape_controls
from comfyfleet.redact import redact_text

app = typer.Typer(
    name="comfyfleet",
    help="Provision rented GPU machines to a verified, running ComfyUI; stream their logs; "
    "keep a warm pool.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help text: rendering it must not import rich
)
logs_app = typer.Typer(help="Stream remote logs.", no_args_is_help=True, rich_markup_mode=None)
pool_app = typer.Typer(
    help="Warm pool of provisioned instances.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(logs_app, name="logs")
app.add_typer(pool_app, name="pool")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: whether this process has printed its --json document (there is exactly one)
_json_printed = [False]


def _human(text: str) -> str:
    """A line fit for a terminal: secrets redacted, control characters escaped."""
    return escape_controls(redact_text(text))


def fail(message: str) -> NoReturn:
    """Refuse a bad invocation: exit 2 with ``message`` (and the --json document, if asked)."""
    raise UsageError(message)


def emit_json(document: dict[str, Any]) -> None:
    """Print exactly one JSON document to stdout (the `--json` contract)."""
    if _json_printed[0]:
        return
    _json_printed[0] = True
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]], *, resume_hint: str, server: bool = False) -> T:
    """Run a coroutine to completion; SIGINT and SIGTERM cancel it cleanly as :class:`Interrupted`.

    ``server``: run on uvloop (``pool serve``), whose event loop and, with httptools,
    uvicorn's HTTP parsing take a quarter of the CPU per API request that asyncio's do.

    Cancellation (not a KeyboardInterrupt at a random bytecode) lets every task clean up:
    part files and sidecars are saved, the run log gets its final line, children are stopped.
    """
    import asyncio

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        caught: list[str] = []

        def stop(name: str) -> None:
            caught.append(name)
            task.cancel()

        for sig in _SIGNALS:
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            return await make()
        except asyncio.CancelledError:
            if caught:
                raise Interrupted(f"stopped by {caught[0]}; {resume_hint}") from None
            raise
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)

    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        with asyncio.Runner(loop_factory=server_loop() if server else None) as runner:
            return runner.run(main())
    finally:
        # remove_signal_handler leaves SIGTERM at its default (death by 143): restore ours
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def server_loop() -> Callable[[], Any]:
    """The event loop factory of `pool serve` (uvloop)."""
    import uvloop

    return uvloop.new_event_loop


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


JsonDoc = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


def run(
    body: Callable[[], int], *, json_doc: JsonDoc | None = None, root: Path | None = None
) -> NoReturn:
    """Run a command body, mapping every outcome to DESIGN.md's exit codes; never a traceback.

    ``json_doc``: with ``--json``, the command's document skeleton (its required fields), or
    a function of the failure's fields; printed with ``"ok": false`` and ``"interrupted":
    true`` or ``"error"`` (and ``"traceback_file"``) when the body ended before printing its
    own. ``root``: where the run keeps its state (traceback files go to
    ``ROOT/.comfyfleet/``; without a root, to the system temp dir).
    """
    _json_printed[0] = False
    # Outside run_async too (manifest loading, printing), SIGTERM means "stop cleanly": 130.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = _outcome(body, json_doc, root)
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


def _outcome(body: Callable[[], int], json_doc: JsonDoc | None, root: Path | None) -> int:
    extra: dict[str, Any] | None = None
    try:
        code = body()
    except typer.Exit:
        raise
    except (Interrupted, KeyboardInterrupt) as exc:
        how = str(exc) if isinstance(exc, Interrupted) else ""
        if not how:
            name = str(exc) or "SIGINT"
            how = f"stopped by {name}; run the same command again to resume"
        print(f"interrupted: {_human(how)}", file=sys.stderr)
        code, extra = 130, {"interrupted": True}
    except ComfyfleetError as exc:
        line = one_line(exc) + (f" — {exc.hint}" if exc.hint else "")
        print(f"error: {_human(line)}", file=sys.stderr)
        code, extra = exc.exit_code, {"error": _human(line)}
    except Exception as exc:  # the last resort: a bug still ends as one line and exit 1
        known = known_error(exc, root)
        if known is not None:
            line = one_line(known) + (f" — {known.hint}" if known.hint else "")
            print(f"error: {_human(line)}", file=sys.stderr)
            code, extra = known.exit_code, {"error": _human(line)}
        else:
            from comfyfleet.tracebacks import save_traceback

            state = root / ".comfyfleet" if root is not None else None
            path = save_traceback(exc, state)
            line = _human(internal_error(exc))
            where = f"the traceback is in {path}" if path else "no traceback file could be written"
            print(f"error: {line} — {where}", file=sys.stderr)
            code, extra = 1, {"error": line}
            if path is not None:
                extra["traceback_file"] = str(path)
    if extra is not None and json_doc is not None:
        base = json_doc(extra) if callable(json_doc) else json_doc
        emit_json({**base, "ok": False, **extra})
    return code
