"""`comfyfleet logs follow`: a thin shell over :func:`comfyfleet.logstream.follow`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from comfyfleet.cli.app import emit_json, fail, logs_app, run, run_async
from comfyfleet.redact import redact_text
from comfyfleet.units import parse_duration

_COUNTS = ("lines", "bytes", "reconnects", "rotations", "truncations")


def _unfinished(extra: dict[str, Any]) -> dict[str, Any]:
    """The document of a follow that ended before its result (refused, interrupted, crashed)."""
    interrupted = bool(extra.get("interrupted"))
    return {
        # "interrupted" is not "failed": the remote run's fate is unknown, not bad
        "outcome": "interrupted" if interrupted else "failed",
        **dict.fromkeys(_COUNTS, 0),
        "last_line": "",
        "message": "interrupted" if interrupted else extra.get("error", ""),
    }


@logs_app.command("follow")
def follow_command(
    host: str = typer.Option(..., "--host", help="Remote machine (name or address)."),
    port: int = typer.Option(22, "--port", help="SSH port."),
    user: str = typer.Option("root", "--user", help="SSH user."),
    key: Path | None = typer.Option(
        None, "--key", help="Private key file (default: the SSH agent and ~/.ssh keys)."
    ),
    known_hosts: Path | None = typer.Option(
        None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."
    ),
    accept_new_host_key: bool = typer.Option(
        False, "--accept-new-host-key", help="Pin the key of a host seen for the first time."
    ),
    path: str = typer.Option(..., "--path", help="Remote log file to follow."),
    output: Path = typer.Option(..., "--output", help="Local copy of the log (LOCAL)."),
    state: Path | None = typer.Option(
        None, "--state", help="Checkpoint file (default LOCAL.checkpoint)."
    ),
    timeout: str = typer.Option("1h", "--timeout", help="Overall deadline, e.g. 1h, 30m, 90s."),
    done_marker: list[str] | None = typer.Option(
        None, "--done-marker", help="Extra line prefix meaning success (repeatable)."
    ),
    fail_marker: list[str] | None = typer.Option(
        None, "--fail-marker", help="Extra line prefix meaning failure (repeatable)."
    ),
    no_default_markers: bool = typer.Option(
        False, "--no-default-markers", help="Use only the markers given."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document to stdout."),
) -> None:
    """Stream a remote log over SSH into LOCAL, exactly once, until a completion marker."""

    def show_line(line: bytes) -> None:
        # Lines go to LOCAL byte for byte; the terminal copy is redacted.
        sys.stderr.write(redact_text(line.decode("utf-8", "replace")) + "\n")

    def show_status(message: str) -> None:
        sys.stderr.write(f"logs follow: {redact_text(message)}\n")

    def body() -> int:
        from comfyfleet.logstream import FollowOptions, FollowTarget, MarkerSet, SshTarget, follow

        try:
            seconds = parse_duration(timeout)
        except ValueError as exc:
            fail(str(exc))
        markers = MarkerSet.build(done_marker, fail_marker, defaults=not no_default_markers)
        if not markers.done and not markers.fail:
            fail("--no-default-markers needs at least one --done-marker or --fail-marker")
        target = FollowTarget(
            SshTarget(host, port, user, key, known_hosts, accept_new_host_key), path, output, state
        )
        result = run_async(
            lambda: follow(
                target,
                FollowOptions(timeout=seconds, markers=markers),
                on_line=None if json_out else show_line,
                on_status=show_status,
            ),
            resume_hint=f"LOCAL and its checkpoint are kept — the same command resumes from "
            f"{state or str(output) + '.checkpoint'}",
        )
        if json_out:
            emit_json(result.to_json())
        if result.outcome != "complete":
            sys.stderr.write(f"error: {redact_text(result.message)}\n")
            return 1
        if not json_out:
            sys.stderr.write(f"{redact_text(result.message)}\n")
        return 0

    # A refused host key, an interrupt or a bug: scripts still get their one document.
    run(body, json_doc=_unfinished if json_out else None)
