"""Download progress for people: rich bars on a TTY, periodic plain lines otherwise.

Driven only by :class:`~comfyfleet.events.RunLog` events. A listener runs on the event loop,
so it only updates in-memory counters; all terminal output happens on another thread (rich's
refresh thread, or our printer thread fed by a queue), so a slow or blocked stderr can never
hold up a download — the old system's ``tee`` pipe did exactly that.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from comfyfleet.events import RunLog
from comfyfleet.names import escape_controls
from comfyfleet.units import format_duration, format_size

#: seconds between plain status lines when stderr is not a terminal
PLAIN_EVERY = 10.0


@dataclass
class _File:
    bytes: int = 0
    total: int | None = None


class ProgressRenderer:
    """Base: tracks per-file and total progress from events; renders nothing."""

    def __init__(self) -> None:
        self.files: dict[str, _File] = {}
        self.finished = 0
        self.failed = 0
        self.skipped = 0
        self.queued = 0
        self.t0 = time.monotonic()
        self.downloaded = 0
        self._lock = threading.Lock()

    @staticmethod
    def start(
        log: RunLog, *, enabled: bool | None = None, stream: TextIO | None = None
    ) -> ProgressRenderer:
        """Subscribe a renderer to ``log``: rich on a TTY, plain lines otherwise, or none."""
        if enabled is False:
            return ProgressRenderer()
        stream = stream or sys.stderr
        isatty = bool(getattr(stream, "isatty", lambda: False)())
        renderer: ProgressRenderer = RichRenderer(stream) if isatty else PlainRenderer(stream)
        log.subscribe(renderer.on_event)
        renderer.begin()
        return renderer

    def begin(self) -> None: ...

    def stop(self) -> None: ...

    def on_event(self, ev: dict[str, Any]) -> None:
        name = ev.get("event", "")
        if not name.startswith("file_"):
            return
        key = f"{ev.get('folder')}/{ev.get('filename')}"
        with self._lock:
            f = self.files.setdefault(key, _File())
            if ev.get("total") is not None:
                f.total = ev["total"]
            if name in ("file_started", "file_progress", "file_retry") and "bytes" in ev:
                f.bytes = ev["bytes"] or 0
            if name == "file_queued":
                self.queued += 1
            elif name == "file_verified":
                self.finished += 1
                self.downloaded += ev.get("downloaded") or 0
                f.bytes = f.total or ev.get("bytes") or 0
            elif name == "file_skipped":
                self.skipped += 1
                f.bytes = f.total = ev.get("bytes") or 0
            elif name == "file_failed":
                self.failed += 1
        self.changed(name, key, ev)

    def changed(self, name: str, key: str, ev: dict[str, Any]) -> None: ...

    def totals(self) -> tuple[int, int]:
        with self._lock:
            done = sum(f.bytes for f in self.files.values())
            total = sum(f.total or 0 for f in self.files.values())
        return done, total


class PlainRenderer(ProgressRenderer):
    """A status line every PLAIN_EVERY seconds, plus one line per finished file."""

    def __init__(self, stream: TextIO, every: float = PLAIN_EVERY) -> None:
        super().__init__()
        self.stream = stream
        self.every = every
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print, name="progress", daemon=True)
        self._last_done = 0
        self._last_t = time.monotonic()

    def begin(self) -> None:
        self._thread.start()

    def _put(self, line: str) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(line)

    def changed(self, name: str, key: str, ev: dict[str, Any]) -> None:
        if name == "file_verified":
            self._put(f"[download] verified {key} ({format_size(ev.get('bytes') or 0)})")
        elif name == "file_failed":
            self._put(f"[download] FAILED {key}: {ev.get('error')}")
        elif name == "file_retry":
            self._put(f"[download] retry {key}: {ev.get('reason')}")

    def status_line(self) -> str:
        done, total = self.totals()
        now = time.monotonic()
        speed = (done - self._last_done) / max(1e-6, now - self._last_t)
        self._last_done, self._last_t = done, now
        eta = format_duration((total - done) / speed) if speed > 0 and total > done else "?"
        return (
            f"[download] {self.finished + self.skipped}/{self.queued} files, "
            f"{format_size(done)}/{format_size(total)}, {format_size(speed)}/s, ETA {eta}"
        )

    def _print(self) -> None:
        next_line = time.monotonic() + self.every
        while True:
            timeout = max(0.0, next_line - time.monotonic())
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                line = ""
            if line is None:
                return
            if not line:
                next_line = time.monotonic() + self.every
                line = self.status_line()
            with contextlib.suppress(Exception):
                # stderr is often captured into a followed log: one event, one escaped line
                self.stream.write(escape_controls(line) + "\n")
                self.stream.flush()

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(2)


class RichRenderer(ProgressRenderer):
    """Per-file bars and a total bar (bytes, speed, ETA) with rich, refreshed on its thread."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            refresh_per_second=4,
            transient=False,
        )
        self.total_task = self.progress.add_task("total", total=0)
        self.tasks: dict[str, Any] = {}

    def begin(self) -> None:
        self.progress.start()

    def changed(self, name: str, key: str, ev: dict[str, Any]) -> None:
        f = self.files.get(key)
        if f is None:
            return
        if name in ("file_started", "file_progress") and key not in self.tasks:
            self.tasks[key] = self.progress.add_task(key, total=f.total, completed=f.bytes)
        if key in self.tasks:
            self.progress.update(self.tasks[key], completed=f.bytes, total=f.total)
            if name in ("file_verified", "file_failed"):
                self.progress.remove_task(self.tasks.pop(key))
        if name == "file_verified":
            self.progress.console.print(f"verified {key}")
        elif name == "file_failed":
            self.progress.console.print(f"[red]FAILED[/red] {key}: {ev.get('error')}")
        done, total = self.totals()
        self.progress.update(self.total_task, completed=done, total=total or None)

    def stop(self) -> None:
        self.progress.stop()
