"""Model-based test of the pure core (after Vector's file_watcher model tests).

A simulated remote machine (files, inodes, renames, truncations) runs the same decisions as
the remote ``sh`` loop and feeds events to :func:`core.step`; random sequences of writes,
partial writes, rotations, truncations, rewrites, disconnects and crashes must leave the
local output equal to the written lines, in order, each exactly once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from comfyfleet.logstream import core
from comfyfleet.logstream.core import (
    Checked,
    Chunk,
    Gone,
    Opened,
    Position,
    Rotated,
    Truncated,
    resume,
    session_request,
    step,
)

ROTATE_WAIT = 2  # idle polls before a renamed file counts as drained


class SimFS:
    """Files by name, contents by inode (dev is always 1)."""

    def __init__(self) -> None:
        self.data: dict[int, bytearray] = {1: bytearray()}
        self.names: dict[str, int] = {"log": 1}
        self.inodes = itertools.count(2)
        self.rotations = itertools.count(1)

    def current(self) -> bytearray:
        return self.data[self.names["log"]]

    def rotate(self) -> None:
        self.names[f"log.{next(self.rotations)}"] = self.names["log"]
        ino = next(self.inodes)
        self.data[ino] = bytearray()
        self.names["log"] = ino


@dataclass
class SimSession:
    """The remote loop of remote.py, step by step."""

    fs: SimFS
    req: core.SessionRequest
    max_chunk: int
    ino: int | None = None
    off: int = 0
    idle: int = 0
    done: bool = False
    rechecked: bool = False

    def poll(self):
        """One loop iteration: an event, or None when there was nothing to report."""
        if self.done:
            return None
        if self.ino is None:
            return self._open()
        content = self.fs.data[self.ino]
        if len(content) < self.off:
            self.done = True
            return Truncated(len(content))
        if len(content) > self.off:
            n = min(len(content) - self.off, self.max_chunk)
            data = bytes(content[self.off : self.off + n])
            self.off += n
            self.idle = 0
            return Chunk(data, len(content), bytes(content[: min(core.HEAD_BYTES, self.off)]))
        if self.fs.names.get("log") != self.ino and self.idle >= ROTATE_WAIT:
            if not self.rechecked:  # like the remote loop: one last re-check, then R
                self.rechecked = True
                return self._check(content)
            self.done = True
            return Rotated()
        self.idle += 1
        return self._check(content)

    def _check(self, content: bytearray) -> Checked:
        return Checked(len(content), bytes(content[: min(core.HEAD_BYTES, self.off)]))

    def _open(self):
        req = self.req
        if req.ino is None:
            self.ino, mode = self.fs.names["log"], "new"
        elif self.fs.names["log"] == req.ino:
            self.ino, mode = req.ino, "same"
        elif req.ino in self.fs.names.values():
            self.ino, mode = req.ino, "old"
        else:
            self.done = True
            return Gone()
        self.off = req.offset
        content = bytes(self.fs.data[self.ino])
        return Opened(1, self.ino, len(content), content[: req.head_len], mode)


class FollowerModel(RuleBasedStateMachine):
    """Writer + simulated remote + core follower + model of what must come out."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = SimFS()
        self.ids = itertools.count()
        self.ended: list[bytes] = []  # expected lines of generations that are over
        self.saved = Position()  # the checkpoint
        self.output = bytearray()
        self.reader = resume(self.saved)
        self.session: SimSession | None = None
        self.max_chunk = 5

    # --- the follower -----------------------------------------------------------------

    def _session(self) -> SimSession:
        if self.session is None or self.session.done:
            self.reader = resume(self.reader.position)
            req = session_request(self.reader)
            self.session = SimSession(self.fs, req, self.max_chunk)
        return self.session

    def _apply(self, event, *, save: bool = True) -> None:
        result = step(self.reader, event)
        self.reader = result.reader
        self.output += result.append
        if result.commit and save:
            self.saved = self.reader.position
        if result.end_session:
            self.session.done = True

    def _pump(self, polls: int) -> None:
        for _ in range(polls):
            event = self._session().poll()
            if event is not None:
                self._apply(event)

    def _catch_up(self) -> None:
        """Run until the follower has everything the live file holds (a connected tail)."""
        quiet = 0
        while quiet <= ROTATE_WAIT + 2:
            event = self._session().poll()
            if event is None or isinstance(event, Checked):
                quiet += 1
                if event is not None:
                    self._apply(event)
            else:
                quiet = 0
                self._apply(event)

    # --- the writer ---------------------------------------------------------------------

    def _line(self, size: int) -> bytes:
        return f"L{next(self.ids):05d}-".encode() + b"x" * size

    @rule(size=st.integers(0, 30), count=st.integers(1, 4))
    def write_lines(self, size: int, count: int) -> None:
        for _ in range(count):
            self.fs.current().extend(self._line(size) + b"\n")

    @rule(size=st.integers(1, 12))
    def write_partial(self, size: int) -> None:
        content = self.fs.current()
        if not content or content.endswith(b"\n"):
            content.extend(self._line(size))
        else:
            content.extend(b"y" * size)

    @precondition(lambda self: self.fs.current()[-1:] not in (b"", b"\n"))
    @rule()
    def finish_line(self) -> None:
        self.fs.current().extend(b"\n")

    def _attached(self) -> bool:
        # The checkpoint names the live file: at most one rotation is in flight. (Two
        # rotations before the follower ever opened the middle file lose that file: it
        # cannot know of it.)
        # Also, a file rewritten in place and then renamed while the follower was away is
        # taken for an unrelated file (an inode found by number whose first bytes differ is
        # never trusted: compressed rotations reuse inode numbers), so the checkpoint must
        # still describe the live content.
        ident = self.saved.identity
        if ident is None or ident.ino != self.fs.names["log"]:
            return False
        return bytes(self.fs.current()).startswith(ident.head[: self.saved.offset])

    @precondition(_attached)
    @rule()
    def rotate(self) -> None:
        self.ended += _lines_of_ended(self.fs.current())
        self.fs.rotate()

    @rule()
    def copytruncate(self) -> None:
        # What was never read before a truncation is gone for any tail; catch up first.
        self._catch_up()
        torn = self.fs.current()[-1:] not in (b"", b"\n")
        self.ended += _lines_of_ended(self.fs.current())
        self.fs.current().clear()
        if torn:
            self._notice_torn_truncation()

    @rule(count=st.integers(1, 8))
    def truncate_and_refill(self, count: int) -> None:
        self._catch_up()
        content = self.fs.current()
        torn = content[-1:] not in (b"", b"\n")
        self.ended += _lines_of_ended(content)
        content.clear()
        if torn:
            self._notice_torn_truncation()
        for _ in range(count):
            content.extend(self._line(20) + b"\n")

    def _notice_torn_truncation(self) -> None:
        # A held partial line lives only in memory: if the follower crashed before seeing
        # the truncation, it is lost (documented). A connected follower sees it at once.
        self._catch_up()

    # --- the network and the follower process --------------------------------------------

    @rule(polls=st.integers(1, 12))
    def follow_some(self, polls: int) -> None:
        self._pump(polls)

    @rule(size=st.integers(1, 64))
    def disconnect(self, size: int) -> None:
        self.session = None
        self.reader = resume(self.reader.position)
        self.max_chunk = size

    @rule()
    def crash(self) -> None:
        del self.output[self.saved.output_size :]
        self.reader = resume(self.saved)
        self.session = None

    @precondition(lambda self: self.session is not None and not self.session.done)
    @rule()
    def crash_between_output_and_checkpoint(self) -> None:
        event = self.session.poll()
        if event is not None:
            self._apply(event, save=False)
        self.crash()

    # --- what must hold -----------------------------------------------------------------

    def _expected(self) -> bytes:
        live = bytes(self.fs.current())
        return b"".join(line + b"\n" for line in self.ended) + live[: live.rfind(b"\n") + 1]

    @invariant()
    def output_is_a_prefix_of_what_was_written(self) -> None:
        assert self._expected().startswith(bytes(self.output))

    @invariant()
    def checkpoint_matches_output(self) -> None:
        assert self.saved.output_size <= len(self.output)

    def teardown(self) -> None:
        self._catch_up()
        assert bytes(self.output) == self._expected()


def _lines_of_ended(content: bytearray) -> list[bytes]:
    # A generation that ends with a partial line delivers it with a newline added.
    text = bytes(content)
    lines = text.split(b"\n")
    return lines[:-1] + ([lines[-1]] if lines[-1] else [])


@pytest.fixture(params=[16, core.HEAD_BYTES], ids=["head16", "head1024"])
def head_bytes(request, monkeypatch):
    monkeypatch.setattr(core, "HEAD_BYTES", request.param)
    return request.param


def test_output_equals_written_lines_in_order_each_once(head_bytes) -> None:
    FollowerModel.TestCase.settings = settings(
        max_examples=150, stateful_step_count=40, deadline=None
    )
    FollowerModel.TestCase().runTest()
