"""Where followed bytes go: the sink interface, and the file sink `logs follow` uses.

A sink receives every delivered chunk together with the checkpoint that describes the
position right after it (a JSON-able dict, see :mod:`checkpoint`). It may batch: what it has
made durable must always be a prefix of the chunks *plus the checkpoint of that prefix's
last chunk*, stored together. On restart :meth:`LogSink.resume` returns that checkpoint and
drops anything after it, and the follower reads again from there: exactly-once without
any coupling between the two beyond this rule. The fleet's store keeps chunks and
checkpoint in one transaction; the file sink fsyncs the file before it replaces the
checkpoint file (reference/logstream.md §4.3).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

from comfyfleet.errors import UsageError
from comfyfleet.logstream import checkpoint

Checkpoint = dict[str, Any]


class LogSink(Protocol):
    """The follower's output (the fleet's store implements it too)."""

    def resume(self) -> Checkpoint | None:
        """The last durable checkpoint (None: nothing yet); drop every chunk after it."""
        ...

    def append(self, chunk: bytes, checkpoint: Checkpoint) -> None:
        """Take ``chunk`` (maybe empty) and the checkpoint of the position after it.

        Called on the event loop: must not block (batch and make durable in ``flush``)."""
        ...

    def flush(self) -> None:
        """Make every appended chunk durable with the last checkpoint (runs in a thread)."""
        ...

    def close(self) -> None:
        """Release files or connections (after a final ``flush``)."""
        ...


class FileSink:
    """LOCAL plus ``LOCAL.checkpoint``: appended at once, fsynced then checkpointed in flush.

    ``link``: a symlink (e.g. ``logs/<instance>/provision.log``) pointed at LOCAL on open,
    replaced atomically, so it always names the latest run's copy.
    """

    def __init__(self, output: Path, state: Path | None = None, *, link: Path | None = None):
        self.output = output
        self.state = state or checkpoint.default_state_path(output)
        self.link = link
        self._fd: int | None = None
        self._latest: Checkpoint | None = None
        self._dirty = False
        self._lock = threading.Lock()

    def resume(self) -> Checkpoint | None:
        """Load the checkpoint and cut LOCAL back to the size it records."""
        doc = checkpoint.load_document(self.state)
        size = 0 if doc is None else int(doc["output_size"])
        self.output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.output, os.O_RDWR | os.O_CREAT, 0o644)
        actual = os.fstat(fd).st_size
        if actual < size:
            os.close(fd)
            raise UsageError(
                f"{self.output} is {actual} bytes but its checkpoint says {size}",
                hint="the output was changed by hand; delete the checkpoint to start over",
            )
        os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)
        self._fd = fd
        if self.link is not None:
            _point(self.link, self.output)
        return doc

    def append(self, chunk: bytes, checkpoint: Checkpoint) -> None:
        """Write ``chunk`` to LOCAL now (lines show up at once); checkpoint later."""
        assert self._fd is not None, "resume() first"
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self._latest = checkpoint  # after the bytes: a flush never records unwritten data
        self._dirty = True

    def flush(self) -> None:
        """fsync LOCAL, then replace the checkpoint: the exactly-once ordering."""
        # A cancelled to_thread() call keeps running; the lock keeps two writers of the temp
        # file apart.
        with self._lock:
            if not self._dirty or self._fd is None:
                return
            self._dirty = False
            doc = self._latest
            os.fsync(self._fd)
            if doc is not None:
                checkpoint.save_document(self.state, doc)

    def close(self) -> None:
        """Close LOCAL."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _point(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)
