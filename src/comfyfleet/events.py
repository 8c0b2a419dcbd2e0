"""The record of a run under ``ROOT/.comfyfleet/``: events, human log, error log, status, sentinels.

One :class:`RunLog` per command run. Everything it writes goes to regular files with small,
unbuffered appends — never through a pipe another process must drain, which is how the old
system's ``tee`` serialised its downloads. Every string is redacted of secrets on the way out.
Listeners (progress renderers, the CLI) subscribe to the same events.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from comfyfleet.errors import DiskFull, disk_errors
from comfyfleet.lock import STATE_DIR, RootLock
from comfyfleet.names import escape_controls
from comfyfleet.redact import redact_text
from comfyfleet.reserve import SpaceReserve

SENTINEL_RUNNING = ".provisioning"
SENTINEL_COMPLETE = ".provisioning_complete"
SENTINEL_FAILED = ".provisioning_failed"
MARKER_COMPLETE = "PROVISIONING COMPLETE"
MARKER_FAILED = "PROVISIONING FAILED"

#: event names that are a public contract (DESIGN.md); others may be added freely
EVENT_NAMES = frozenset(
    {
        "run_started", "phase_started", "phase_finished", "file_queued", "file_started",
        "file_progress", "file_retry", "file_verified", "file_skipped", "file_failed",
        "node_installed", "node_failed", "validation", "comfyui_started", "comfyui_ready",
        "run_completed", "run_failed",
    }
)  # fmt: skip

Listener = Callable[[dict[str, Any]], None]

#: The words a ``provision.log`` line may start with (after its timestamp). A line always opens
#: with one of comfyfleet's own words, never with a value a user or a server chose (a folder,
#: a filename, a node name), so only comfyfleet can write a line that starts with a marker.
LogWord = Literal[
    "provision", "download", "downloads", "verified", "skip", "mirror", "node", "comfyui",
    "environment", "workflow", "check", "phase", "WARNING", "ERROR",
]  # fmt: skip
LOG_WORDS: frozenset[str] = frozenset(LogWord.__args__)  # type: ignore[attr-defined]
#: how a line of text comfyfleet did not write itself (subprocess output, a server's message,
#: the continuation lines of a multi-line message) is indented in provision.log and errors.log
FOREIGN_INDENT = "  | "


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _lines(text: str) -> list[str]:
    """``text`` redacted and split at line ends, each line with its control characters escaped.

    Only ``\\n`` (and ``\\r\\n``) end a line; any other control character (``\\r``, ESC,
    a Unicode line separator) is shown escaped, so one value can never start a second line.
    """
    lines = redact_text(text).removesuffix("\n").split("\n")
    return [escape_controls(line.removesuffix("\r")) for line in lines]


def write_atomic(path: Path, data: str | bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a failed write (a full disk) must not leave its half file taking the space
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


#: what a state write may raise when the disk is full or a state file cannot be written
_WRITE_ERRORS = (OSError, DiskFull)


class _AppendFile:
    """A line-buffered append-only text file; a full disk raises :class:`DiskFull`."""

    def __init__(self, path: Path, root: Path) -> None:
        self._fh = open(path, "a", buffering=1, encoding="utf-8")
        self._root = root

    def write(self, text: str) -> None:
        with disk_errors(self._root):
            self._fh.write(text)

    def flush(self) -> None:
        with disk_errors(self._root):
            self._fh.flush()

    def close(self) -> None:
        """Close; lines a full disk refused are dropped (the fd is closed either way)."""
        with contextlib.suppress(OSError):
            self._fh.close()


@dataclass
class RunStatus:
    """What ``status.json`` holds (rewritten atomically, at most a few times a second)."""

    run: str
    phase: str = "starting"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    bytes_done: int = 0
    bytes_total: int = 0
    ok: bool | None = None


class RunLog:
    """Events, logs, status and sentinels of one command run under a root directory."""

    def __init__(self, root: Path, command: str, *, sentinels: bool = False) -> None:
        self.root = Path(root)
        self.dir = self.root / STATE_DIR
        self.command = command
        self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        self.sentinels = sentinels
        self.status = RunStatus(run=self.run_id)
        self._listeners: list[Listener] = []
        self._status_written = 0.0
        self._started = time.monotonic()
        self._closed = False
        # The lock first: a run refused because another holds ROOT changes no file.
        self._lock = RootLock(self.root, command)
        self._lock.acquire()
        try:
            self._open(sentinels)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, sentinels: bool) -> None:
        self._reserve = SpaceReserve(self.dir / "reserve")
        self._reserve.hold()
        log = self.dir / "provision.log"
        if log.exists():
            os.replace(log, self.dir / "provision.log.1")
        if sentinels:
            for name in (SENTINEL_RUNNING, SENTINEL_COMPLETE, SENTINEL_FAILED):
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()
            (self.root / SENTINEL_RUNNING).write_text(f"{self.run_id}\n")
        # Line-buffered appends to regular files: a slow reader can never block us.
        self._events = _AppendFile(self.dir / "events.jsonl", self.root)
        self._log = _AppendFile(log, self.root)
        self._errors = _AppendFile(self.dir / "errors.log", self.root)

    # --- subscription ------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(event_dict)`` for every event from now on."""
        self._listeners.append(listener)

    # --- writing -----------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event to ``events.jsonl`` and hand it to the listeners."""
        record = {"ts": now_iso(), "event": event, "run": self.run_id, **_clean(fields)}
        if not self._closed:
            self._events.write(json.dumps(record, default=str) + "\n")
        for listener in self._listeners:
            listener(record)
        return record

    def info(self, word: LogWord, message: str = "") -> None:
        """Write ``[timestamp] WORD message`` to ``provision.log``.

        ``word`` is one of :data:`LOG_WORDS`; the lines after the first of a multi-line
        message are foreign text (an output tail, a server's answer) and go in indented.
        """
        if word not in LOG_WORDS:
            raise ValueError(f"a provision.log line must start with one of {sorted(LOG_WORDS)}")
        self._write(self._log, f"[{now_iso()}] {word}", message)

    def output(self, source: str, text: str) -> None:
        """Write a subprocess's output to ``provision.log``, indented so it can't fake a marker."""
        for line in text.removesuffix("\n").split("\n") if text else []:
            self._write(self._log, FOREIGN_INDENT.rstrip(), f"{source}: {line}")

    def error(self, what: str, reason: str, **context: Any) -> None:
        """Record a failure in ``errors.log`` (kept across runs) and ``provision.log``."""
        ctx = " ".join(f"{k}={_clean(v)}" for k, v in context.items() if v is not None)
        first, _, rest = f"{what}: {reason}".partition("\n")
        message = first + (f" ({ctx})" if ctx else "") + (f"\n{rest}" if rest else "")
        self._write(self._errors, f"[{now_iso()}] run={self.run_id}", message)
        self.info("ERROR", message)

    def _write(self, fh: Any, head: str, message: str) -> None:
        """The one place human lines are written: redacted, escaped, foreign lines indented."""
        if self._closed:
            return
        first, *rest = _lines(message) or [""]
        out = [f"{head} {first}".rstrip(" ")]
        out += [f"{FOREIGN_INDENT}{line}" for line in rest]
        fh.write("\n".join(out) + "\n")

    def set_phase(self, phase: str) -> None:
        """Enter a phase: event, log line and status."""
        self.status.phase = phase
        self.emit("phase_started", phase=phase)
        self.info("phase", phase)
        self.write_status(force=True)

    def write_status(self, *, force: bool = False) -> None:
        """Rewrite ``status.json`` atomically (throttled to 4/s unless ``force``)."""
        now = time.monotonic()
        if self._closed or (not force and now - self._status_written < 0.25):
            return
        self._status_written = now
        doc = _clean(self.status.__dict__)
        with disk_errors(self.root):
            write_atomic(self.dir / "status.json", json.dumps(doc, indent=1) + "\n", fsync=False)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    def finish(self, ok: bool, reason: str = "") -> None:
        """End the run: status, final marker line, sentinels; then close the files.

        The space reserve is given back first and each step is tried on its own, so a full
        disk or a broken state file still leaves the marker line and the sentinel.
        """
        if self._closed:
            return
        self._reserve.release()
        reason = redact_text(reason)
        self.status.ok = ok
        self.status.phase = "done" if ok else "failed"
        with contextlib.suppress(*_WRITE_ERRORS):
            self.write_status(force=True)
        with contextlib.suppress(*_WRITE_ERRORS):
            if ok:
                self.emit("run_completed", seconds=round(self.elapsed, 3))
            else:
                self.emit("run_failed", reason=reason, seconds=round(self.elapsed, 3))
        if self.sentinels:
            # The marker is a line of its own, without timestamp, so followers match it exactly.
            summary = MARKER_COMPLETE if ok else f"{MARKER_FAILED}: {reason}"
            with contextlib.suppress(*_WRITE_ERRORS):
                self._log.write(escape_controls(summary.replace("\n", " ")) + "\n")
                self._log.flush()
            name = SENTINEL_COMPLETE if ok else SENTINEL_FAILED
            with contextlib.suppress(OSError):
                (self.root / name).write_text(f"{self.run_id}\n" + ("" if ok else f"{reason}\n"))
            with contextlib.suppress(FileNotFoundError):
                (self.root / SENTINEL_RUNNING).unlink()
        self.close()

    def close(self) -> None:
        """Close the files (idempotent; lines a full disk refused are dropped)."""
        if self._closed:
            return
        self._closed = True
        for fh in (self._events, self._log, self._errors):
            fh.close()
        self._lock.release()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
