"""What the CLI shows of a run while it goes: rich bars on a TTY, periodic plain lines otherwise.

A CLI-side subscriber to :class:`~comfyfleet.events.RunLog` events; the library never renders
anything. :class:`EventConsole` is the one listener the CLI subscribes: on the event loop it
only puts the event on a queue; a thread of its own hands the events to the renderers, which
write to the terminal. So a slow or blocked stderr can never hold up a download — the old
system's ``tee`` pipe did exactly that.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from comfyfleet.names import escape_controls
from comfyfleet.units import format_duration, format_size

#: seconds between plain status lines when stderr is not a terminal
PLAIN_EVERY = 10.0
#: events waiting for the terminal; beyond this, file_progress events are dropped
QUEUE_LIMIT = 10_000

Event = dict[str, Any]
Handler = Callable[[Event], None]


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

    def begin(self) -> None: ...

    def stop(self) -> None: ...

    def tick(self) -> None:
        """Called by the console thread about once a second when no event came."""

    def on_event(self, ev: Event) -> None:
        name = ev.get("event", "")
        if not name.startswith("file_"):
            return
        key = "/".join(
            str(p) for p in (ev.get("folder"), ev.get("subfolder"), ev.get("filename")) if p
        )
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

    def changed(self, name: str, key: str, ev: Event) -> None: ...

    def totals(self) -> tuple[int, int]:
        done = sum(f.bytes for f in self.files.values())
        total = sum(f.total or 0 for f in self.files.values())
        return done, total


class PlainRenderer(ProgressRenderer):
    """A status line every PLAIN_EVERY seconds, plus one line per finished file."""

    def __init__(self, stream: TextIO, every: float = PLAIN_EVERY) -> None:
        super().__init__()
        self.stream = stream
        self.every = every
        self._next = time.monotonic() + every
        self._last_done = 0
        self._last_t = time.monotonic()

    def _write(self, line: str) -> None:
        with contextlib.suppress(Exception):
            # stderr is often captured into a followed log: one event, one escaped line
            self.stream.write(escape_controls(line) + "\n")
            self.stream.flush()

    def changed(self, name: str, key: str, ev: Event) -> None:
        if name == "file_verified":
            self._write(f"[download] verified {key} ({format_size(ev.get('bytes') or 0)})")
        elif name == "file_failed":
            self._write(f"[download] FAILED {key}: {ev.get('error')}")
        elif name == "file_retry":
            self._write(f"[download] retry {key}: {ev.get('reason')}")
        self.tick()

    def tick(self) -> None:
        if self.queued and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every
            self._write(self.status_line())

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


class RichRenderer(ProgressRenderer):
    """Per-file bars and a total bar (bytes, speed, ETA) with rich, refreshed on its thread."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._escape = escape
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

    def changed(self, name: str, key: str, ev: Event) -> None:
        f = self.files.get(key)
        if f is None:
            return
        label = self._escape(key)  # a file name is not rich markup
        if name in ("file_started", "file_progress") and key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=f.total, completed=f.bytes)
        if key in self.tasks:
            self.progress.update(self.tasks[key], completed=f.bytes, total=f.total)
            if name in ("file_verified", "file_failed"):
                self.progress.remove_task(self.tasks.pop(key))
        if name == "file_verified":
            self.progress.console.print(f"verified {label}")
        elif name == "file_failed":
            error = self._escape(str(ev.get("error")))
            self.progress.console.print(f"[red]FAILED[/red] {label}: {error}")
        done, total = self.totals()
        self.progress.update(self.total_task, completed=done, total=total or None)

    def stop(self) -> None:
        self.progress.stop()


def renderer_for(stream: TextIO, *, enabled: bool | None = None) -> ProgressRenderer:
    """rich bars when ``stream`` is a terminal, plain lines otherwise, nothing when disabled."""
    if enabled is False:
        return ProgressRenderer()
    isatty = bool(getattr(stream, "isatty", lambda: False)())
    return RichRenderer(stream) if isatty else PlainRenderer(stream)


class EventConsole:
    """The CLI's one event listener: queues events on the loop, renders them on a thread."""

    def __init__(self, handlers: list[Handler], renderer: ProgressRenderer | None = None) -> None:
        self.renderer = renderer or ProgressRenderer()
        self.handlers = [self.renderer.on_event, *handlers]
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="event-console", daemon=True)

    def on_event(self, ev: Event) -> None:
        """The listener (runs on the event loop): never blocks, never writes."""
        if ev.get("event") == "file_progress" and self._queue.qsize() >= QUEUE_LIMIT:
            return  # the terminal is behind: a later progress event says more
        self._queue.put_nowait(ev)

    def start(self) -> None:
        self.renderer.begin()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Render what is queued (within ``timeout``), then stop the renderer."""
        self._queue.put_nowait(None)
        self._thread.join(timeout)
        self.renderer.stop()

    def _drain(self) -> None:
        while True:
            try:
                ev = self._queue.get(timeout=1.0)
            except queue.Empty:
                self.renderer.tick()
                continue
            if ev is None:
                return
            for handler in self.handlers:
                with contextlib.suppress(Exception):  # a display bug must not end the display
                    handler(ev)


@contextlib.contextmanager
def event_console(
    *handlers: Handler, progress: bool | None = None, stream: TextIO | None = None
) -> Iterator[EventConsole]:
    """An :class:`EventConsole` for the duration of a command: download progress (rich on a
    TTY, plain lines otherwise; none when ``progress`` is False) plus ``handlers``."""
    console = EventConsole(list(handlers), renderer_for(stream or sys.stderr, enabled=progress))
    console.start()
    try:
        yield console
    finally:
        console.stop()
