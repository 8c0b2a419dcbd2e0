"""The follow loop: connect, run read sessions, apply events, append, checkpoint, reconnect.

One coroutine per followed file; the fleet runs many of them in one event loop. The loop
never gives up on a lost connection: it reconnects with capped, jittered exponential backoff
until the overall deadline (the old collector stopped after 5 attempts).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncssh

from comfyfleet.errors import RemotePathError
from comfyfleet.logstream import checkpoint
from comfyfleet.logstream.core import Position, Reader, reconnected, resume, session_request, step
from comfyfleet.logstream.markers import LineClassifier, MarkerSet
from comfyfleet.logstream.remote import (
    ConnectionLost,
    NotRegularFile,
    ReadSession,
    ReadTuning,
    SshTarget,
    open_connection,
)
from comfyfleet.logstream.sink import FileSink, LogSink
from comfyfleet.names import escape_controls


@dataclass(frozen=True)
class FollowTarget:
    """One remote log and where its local copy and checkpoint live."""

    ssh: SshTarget
    path: str
    output: Path | None = None
    state: Path | None = None

    @property
    def state_path(self) -> Path:
        """``--state`` or ``LOCAL.checkpoint``."""
        if self.state is None and self.output is None:
            raise ValueError("no output and no state path")
        return self.state or checkpoint.default_state_path(self.output)  # type: ignore[arg-type]

    @property
    def source(self) -> str:
        """Host and path, recorded in the checkpoint so another log cannot resume from it."""
        return f"{self.ssh.label}:{self.path}"


@dataclass(frozen=True)
class FollowOptions:
    """Deadline, markers, remote loop timing and reconnect backoff."""

    timeout: float = 3600.0
    #: which lines end the follow (a MarkerSet, or any LineClassifier, e.g. for JSON events)
    markers: LineClassifier = field(default_factory=MarkerSet)
    tuning: ReadTuning = field(default_factory=ReadTuning)
    backoff_base: float = 0.25
    backoff_cap: float = 10.0
    #: lines reach LOCAL at once; fsync + checkpoint happen at most this often (and at every
    #: heartbeat, session end and exit), so many hosts in one loop do not drown in fsyncs
    commit_interval: float = 0.25


@dataclass(frozen=True)
class FollowResult:
    """How a follow ended; ``to_json()`` is the `logs follow --json` document."""

    outcome: Literal["complete", "failed", "timeout"]
    lines: int
    bytes: int
    reconnects: int
    rotations: int
    truncations: int
    last_line: str
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md `--json` fields (plus ``message``)."""
        return {
            "outcome": self.outcome,
            "lines": self.lines,
            "bytes": self.bytes,
            "reconnects": self.reconnects,
            "rotations": self.rotations,
            "truncations": self.truncations,
            "last_line": self.last_line,
            "message": self.message,
        }


LineCallback = Callable[[bytes], None]
StatusCallback = Callable[[str], None]


async def follow(
    target: FollowTarget,
    options: FollowOptions | None = None,
    *,
    on_line: LineCallback | None = None,
    on_status: StatusCallback | None = None,
    sink: LogSink | None = None,
    start: Position | None = None,
) -> FollowResult:
    """Follow ``target.path`` into ``sink`` (default: a :class:`FileSink` on
    ``target.output``) until a marker or the deadline.

    ``start``: where to begin when the sink has no checkpoint yet (default: offset 0 of
    whatever file the path names), e.g. the end of a previous run's log.
    """
    options = options or FollowOptions()
    if sink is None:
        if target.output is None:
            raise ValueError("a FollowTarget without output needs a sink")
        sink = FileSink(target.output, target.state_path)
    doc = sink.resume()
    if doc is None:
        position = start or Position()
    else:
        position = checkpoint.position_of(doc, source=target.source, where=_where(target, sink))
    run = _Run(target, options, sink, position, on_line, on_status or (lambda _msg: None))
    try:
        async with asyncio.timeout(options.timeout):
            return await run.until_marker()
    except TimeoutError:
        return run.result("timeout", run.timeout_message())
    finally:
        sink.flush()  # also on cancellation: keep what was delivered
        sink.close()


def _where(target: FollowTarget, sink: LogSink) -> str:
    return str(sink.state) if isinstance(sink, FileSink) else f"of the sink for {target.source}"


class _Run:
    """The mutable state of one follow (kept out of the pure core on purpose)."""

    def __init__(
        self,
        target: FollowTarget,
        options: FollowOptions,
        sink: LogSink,
        position: Position,
        on_line: LineCallback | None,
        on_status: StatusCallback,
    ) -> None:
        self.target = target
        self.options = options
        self.sink = sink
        self.reader = resume(position)
        self.on_line = on_line
        self.status = on_status
        self.last_error = ""
        self.connected_before = False
        self.dirty = False
        self.committed_at = 0.0
        self._progressed = False  # whether the last session produced any event

    def result(
        self, outcome: Literal["complete", "failed", "timeout"], message: str
    ) -> FollowResult:
        c = self.reader.position.counters
        return FollowResult(
            outcome, c.lines, c.bytes, c.reconnects, c.rotations, c.truncations, c.last_line,
            message,
        )  # fmt: skip

    def timeout_message(self) -> str:
        msg = (
            f"no completion marker in {self.target.path} on {self.target.ssh.host} within "
            f"{self.options.timeout:g}s"
        )
        return f"{msg} (last connection error: {self.last_error})" if self.last_error else msg

    async def until_marker(self) -> FollowResult:
        attempt = 0
        while True:
            try:
                conn = await open_connection(self.target.ssh)
            except ConnectionLost as exc:
                attempt = await self._backoff(attempt, exc)
                continue
            if self.connected_before:
                self.reader = Reader(reconnected(self.reader.position))
            self.connected_before = True
            try:
                result = await self._sessions(conn)
            except ConnectionLost as exc:
                # abort(), not close(): a polite close can wait on a peer that is gone.
                conn.abort()
                # Anything read but not committed is dropped and read again from the offset.
                self.reader = resume(self.reader.position)
                attempt = await self._backoff(0 if self._progressed else attempt, exc)
            except BaseException:
                conn.abort()  # deadline or cancellation
                raise
            else:
                conn.close()
                return result

    async def _backoff(self, attempt: int, exc: ConnectionLost) -> int:
        if str(exc) != self.last_error:  # one notice per kind of failure, not per attempt
            self.status(f"connection to {self.target.ssh.host} lost or refused ({exc}); retrying")
        self.last_error = str(exc)
        ceiling = min(self.options.backoff_cap, self.options.backoff_base * 2**attempt)
        # Jitter spreads the reconnects of a fleet that lost the same network at once.
        await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
        return attempt + 1

    async def _sessions(self, conn: asyncssh.SSHClientConnection) -> FollowResult:
        tuning = self.options.tuning
        while True:
            self.reader = resume(self.reader.position)
            req = session_request(self.reader)
            session = await ReadSession.start(conn, self.target.path, req, tuning)
            self._progressed = False
            try:
                result = await self._drive(session)
            except NotRegularFile as exc:
                # Not retried: waiting cannot turn a directory into a log (exit 2).
                raise RemotePathError(
                    f"{escape_controls(self.target.path)} on {self.target.ssh.host} is a "
                    f"{exc.kind}, not a regular file",
                    hint="--path must name the log file itself, e.g. "
                    "ROOT/.comfyfleet/provision.log",
                ) from None
            finally:
                session.close()
            if result is not None:
                return result
            if not self._progressed:
                await asyncio.sleep(tuning.poll)  # the reader ended early (file vanished)

    async def _drive(self, session: ReadSession) -> FollowResult | None:
        while (event := await session.next_event()) is not None:
            self._progressed = True
            st = step(self.reader, event)
            self.reader = st.reader
            if st.append or st.commit:
                doc = checkpoint.encode(st.reader.position, source=self.target.source)
                self.sink.append(st.append, doc)
            self.dirty = self.dirty or st.commit
            loop = asyncio.get_running_loop()
            if self.dirty and (
                st.end_session
                or not st.append
                or loop.time() - self.committed_at >= self.options.commit_interval
            ):
                # fsync blocks: run it off the event loop so other followers keep going.
                self.dirty = False
                await asyncio.to_thread(self.sink.flush)
                self.committed_at = loop.time()
            if st.lines:
                if self.on_line is not None:
                    for line in st.lines:
                        self.on_line(line)
                hit = self.options.markers.first_match(st.lines)
                if hit is not None:
                    self.sink.flush()
                    outcome, line = hit
                    verb = "completed" if outcome == "complete" else "reported failure"
                    return self.result(outcome, f"{self.target.path} {verb}: {line}")
            if st.end_session and not getattr(event, "continues", False):
                return None
        return None
