"""Run one external command (git, pip, install.py) with a timeout, output into the run log.

The one place subprocesses are started during provisioning: output lines go to
``provision.log`` indented (``  | source: line``) so a tool printing a marker cannot fake one;
a non-zero exit becomes :class:`~comfyfleet.errors.CommandFailed` with the tail of the output.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from comfyfleet.errors import CommandFailed
from comfyfleet.events import RunLog

#: lines of output kept for the error message of a failed command
TAIL_LINES = 30


async def run_command(
    argv: Sequence[str | Path],
    *,
    log: RunLog | None,
    source: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
    hint: str = "",
) -> str:
    """Run ``argv``; stream its output into ``log``; return the output; raise CommandFailed.

    ``env`` is added to the current environment. The command runs in its own process group so
    a timeout or a cancellation kills everything it started (pip's build subprocesses too).
    """
    args = [str(a) for a in argv]
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=str(cwd) if cwd else None,
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            lines.append(line)
            if log is not None:
                log.output(source, line)

    try:
        async with asyncio.timeout(timeout):
            await pump()
            returncode = await proc.wait()
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        if isinstance(exc, TimeoutError):
            raise CommandFailed(
                args, -1, "\n".join(tail) + f"\n(timed out after {timeout:.0f}s)", hint=hint
            ) from None
        raise
    if returncode != 0:
        raise CommandFailed(args, returncode, "\n".join(tail), hint=hint)
    return "\n".join(lines)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
