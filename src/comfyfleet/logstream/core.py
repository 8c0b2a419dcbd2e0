"""The pure core of the follower: positions, file identity, line splitting, generation changes.

No I/O here. The remote reader (``remote.py``) turns what it sees on the remote machine into
the events below; :func:`step` decides what they mean for the local output and the checkpoint.
The invariants, checked by a hypothesis state machine against a model (tests/logstream):

* ``Position.offset`` is always just after a ``\\n`` of the current remote file (or 0): only
  complete lines are committed; a trailing partial line is held in ``Reader.pending``.
  (Except after a line longer than ``MAX_LINE_BYTES``, delivered in pieces.)
* ``FileIdentity.head`` is exactly the first ``min(HEAD_BYTES, read_offset)`` bytes of the file,
  so "the same file" is checked by comparing those bytes with what the remote reads now.
  (The bytes themselves rather than a hash: at most 1 KiB per check, and it spares the remote
  machine a ``sha256sum`` process per read.)
* A file *generation* (one remote file, from offset 0) ends on rename rotation, truncation or
  rewrite; its held partial line is then delivered with a newline added, because no later byte
  can complete it (Vector does the same for deleted files).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

#: how many leading bytes of a file take part in its identity (Vector fingerprints the start)
HEAD_BYTES = 1024
#: a partial line longer than this is delivered in pieces of exactly this size (each with a
#: newline added) rather than held without bound: a progress bar drawn with \r never ends
#: its line
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileIdentity:
    """A remote file: (device, inode) plus its first bytes (inode numbers get reused)."""

    dev: int
    ino: int
    head: bytes = b""

    def head_is(self, seen: bytes, at: int) -> bool:
        """Whether ``seen`` is this file's head as it must look with ``at`` bytes read."""
        return seen == self.head[: min(HEAD_BYTES, at)]


@dataclass(frozen=True)
class Counters:
    """What happened so far; cumulative across restarts (kept in the checkpoint)."""

    lines: int = 0
    bytes: int = 0
    reconnects: int = 0
    rotations: int = 0
    truncations: int = 0
    last_line: str = ""


@dataclass(frozen=True)
class Position:
    """The checkpointed state: which file, how far it is delivered, how big LOCAL was then."""

    identity: FileIdentity | None = None
    offset: int = 0
    output_size: int = 0
    counters: Counters = field(default_factory=Counters)


@dataclass(frozen=True)
class SessionRequest:
    """What the next remote read session should open and from where."""

    offset: int
    dev: int | None
    ino: int | None
    head_len: int


# --- events reported by the remote reader --------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """The reader opened a file: identity, size, its first ``head_len`` bytes and ``mode``:
    new (any file at the path), same (the expected inode at the path) or old (the expected
    inode found renamed in the same directory)."""

    dev: int
    ino: int
    size: int
    head: bytes
    mode: Literal["new", "same", "old"]


@dataclass(frozen=True)
class Chunk:
    """Bytes read at the reader's offset, then the file's size and head re-read."""

    data: bytes
    size_after: int
    head: bytes


@dataclass(frozen=True)
class Checked:
    """An idle-time re-check (with the heartbeat): size and head at the reader's offset.

    Without it a file truncated and refilled to exactly the old size would go unnoticed."""

    size: int
    head: bytes


@dataclass(frozen=True)
class Rotated:
    """The old file is drained and the path names another file now. With ``continues`` the
    same session goes on with the new file (an ``Opened`` follows); else it ends."""

    continues: bool = False


@dataclass(frozen=True)
class Truncated:
    """The open file shrank below the reader's offset (copytruncate, ``: > file``). With
    ``continues`` the same session goes on reading it from 0; else it ends."""

    size: int
    continues: bool = False


@dataclass(frozen=True)
class Gone:
    """The expected inode is no longer at the path nor anywhere in its directory."""


Event = Opened | Chunk | Checked | Rotated | Truncated | Gone


@dataclass(frozen=True)
class Reader:
    """In-memory state while a session runs: the committed position plus held bytes."""

    position: Position
    pending: bytes = b""

    @property
    def read_offset(self) -> int:
        """Offset in the remote file of the next byte the session will send."""
        return self.position.offset + len(self.pending)


@dataclass(frozen=True)
class Step:
    """The result of one event: new reader state, bytes to append to LOCAL, whether to
    checkpoint, and whether the current remote session must end (a new one is needed)."""

    reader: Reader
    append: bytes = b""
    lines: tuple[bytes, ...] = ()
    commit: bool = False
    end_session: bool = False


def resume(position: Position) -> Reader:
    """The reader after a (re)connect: held bytes are dropped and re-read from the offset."""
    identity = position.identity
    if identity is not None and len(identity.head) > min(HEAD_BYTES, position.offset):
        identity = replace(identity, head=identity.head[: min(HEAD_BYTES, position.offset)])
    return Reader(replace(position, identity=identity))


def session_request(reader: Reader) -> SessionRequest:
    """Where the next remote session starts; the reader must be freshly resumed."""
    pos = reader.position
    ident = pos.identity
    if ident is None:
        return SessionRequest(0, None, None, 0)
    return SessionRequest(pos.offset, ident.dev, ident.ino, min(HEAD_BYTES, pos.offset))


def step(reader: Reader, event: Event) -> Step:
    """Apply one remote event to the reader (pure)."""
    if isinstance(event, Opened):
        return _opened(reader, event)
    if isinstance(event, Chunk):
        return _chunk(reader, event)
    if isinstance(event, Checked):
        return _checked(reader, event)
    if isinstance(event, Rotated | Gone):
        return _end_generation(reader, rotated=True)
    if isinstance(event, Truncated):
        return _end_generation(reader, rotated=False)
    raise TypeError(f"unknown event {event!r}")


def _opened(reader: Reader, ev: Opened) -> Step:
    pos = reader.position
    ident = pos.identity
    if ev.mode == "new" or ident is None:
        # Committed at once: if this file is rotated away while we are down, the checkpoint
        # must name its inode so the next run drains it instead of skipping it.
        fresh = replace(pos, identity=FileIdentity(ev.dev, ev.ino), offset=0)
        return Step(Reader(fresh), commit=True)
    same_inode = (ev.dev, ev.ino) == (ident.dev, ident.ino)
    if same_inode and ident.head_is(ev.head, pos.offset) and ev.size >= pos.offset:
        return Step(reader)
    # The inode we were reading was rewritten or shrank while we were away (or, in "old"
    # mode, the inode number now belongs to some other file): its tail is lost to us.
    return _end_generation(reader, rotated=ev.mode == "old")


def _chunk(reader: Reader, ev: Chunk) -> Step:
    pos = reader.position
    ident = pos.identity
    if ident is None:
        raise ValueError("data before the file was opened")
    new_read = reader.read_offset + len(ev.data)
    head = ident.head
    if len(head) < HEAD_BYTES:
        head = (head + ev.data)[:HEAD_BYTES]
    if ev.size_after < new_read or ev.head != head[: min(HEAD_BYTES, new_read)]:
        # Shrunk or rewritten while we read: these bytes may not be the file we think
        # it is, so drop them and start the new generation from 0.
        return _end_generation(reader, rotated=False)
    buf = reader.pending + ev.data
    cut = buf.rfind(b"\n") + 1
    complete, pending = buf[:cut], buf[cut:]
    lines = complete.split(b"\n")[:-1]
    if len(complete) > MAX_LINE_BYTES and any(len(x) > MAX_LINE_BYTES for x in lines):
        lines = [p for x in lines for p in _pieces(x)]
        complete = b"".join(x + b"\n" for x in lines)
    if len(pending) > MAX_LINE_BYTES:
        # The held part starts where a piece starts, so its pieces line up with those of
        # the whole line; the last piece waits (its newline may come). The offset then
        # points inside that line.
        whole = _pieces(pending)
        lines += whole[:-1]
        complete += b"".join(x + b"\n" for x in whole[:-1])
        pending = whole[-1]
    new_pos = replace(pos, identity=replace(ident, head=head))
    if not complete:
        return Step(Reader(new_pos, pending))
    new_pos = replace(
        new_pos,
        offset=new_read - len(pending),
        output_size=pos.output_size + len(complete),
        counters=_counted(pos.counters, lines, len(complete)),
    )
    return Step(Reader(new_pos, pending), complete, tuple(lines), commit=True)


def _pieces(line: bytes) -> list[bytes]:
    """``line`` cut every ``MAX_LINE_BYTES``: LOCAL is then the same whatever the chunking."""
    return [line[i : i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES)] or [line]


def _checked(reader: Reader, ev: Checked) -> Step:
    ident = reader.position.identity
    if ident is None:
        raise ValueError("re-check before the file was opened")
    at = reader.read_offset
    if ev.size >= at and ident.head_is(ev.head, at):
        return Step(reader)
    return _end_generation(reader, rotated=False)


def _end_generation(reader: Reader, *, rotated: bool) -> Step:
    pos = reader.position
    append = reader.pending + b"\n" if reader.pending else b""
    lines = (reader.pending,) if reader.pending else ()
    c = _counted(pos.counters, lines, len(append))
    ident = pos.identity
    if rotated or ident is None:
        # The next generation is whatever file the path names now.
        c = replace(c, rotations=c.rotations + 1)
        ident = None
    else:
        # Same inode, new content: read it from 0 even if the path was renamed meanwhile.
        c = replace(c, truncations=c.truncations + 1)
        ident = FileIdentity(ident.dev, ident.ino)
    new_pos = Position(ident, 0, pos.output_size + len(append), c)
    return Step(Reader(new_pos), append, lines, commit=True, end_session=True)


def _counted(c: Counters, lines: tuple[bytes, ...], nbytes: int) -> Counters:
    if not lines:
        return replace(c, bytes=c.bytes + nbytes)
    last = lines[-1].decode("utf-8", "replace")
    return replace(c, lines=c.lines + len(lines), bytes=c.bytes + nbytes, last_line=last)


def reconnected(position: Position) -> Position:
    """The same position with one more reconnect counted."""
    c = position.counters
    return replace(position, counters=replace(c, reconnects=c.reconnects + 1))
