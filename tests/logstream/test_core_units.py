"""Single decisions of the pure core, spelled out (the state machine covers the mixes)."""

from __future__ import annotations

from comfyfleet.logstream import core
from comfyfleet.logstream.core import Chunk, Opened, Position, Truncated, resume, step


def opened(reader: core.Reader) -> core.Reader:
    return step(reader, Opened(1, 7, 0, b"", "new")).reader


def feed(reader: core.Reader, content: bytes, data: bytes) -> core.Step:
    """One chunk of ``data`` whose file now holds ``content``."""
    return step(reader, Chunk(data, len(content), content[: core.HEAD_BYTES]))


def test_complete_lines_are_committed_and_the_partial_one_held():
    reader = opened(resume(Position()))
    st = feed(reader, b"a\nb\npar", b"a\nb\npar")
    assert (st.append, st.lines, st.commit) == (b"a\nb\n", (b"a", b"b"), True)
    assert st.reader.position.offset == 4 and st.reader.pending == b"par"
    st = feed(st.reader, b"a\nb\npartial\n", b"tial\n")
    assert st.append == b"partial\n" and st.reader.position.offset == 12


def test_a_chunk_is_dropped_when_the_head_changed_meanwhile():
    reader = feed(opened(resume(Position())), b"one\n", b"one\n").reader
    st = feed(reader, b"TWO\nthree\n", b"three\n")  # rewritten under us
    assert st.append == b"" and st.end_session
    assert st.reader.position.offset == 0 and st.reader.position.counters.truncations == 1
    assert st.reader.position.identity.ino == 7  # same inode, read again from 0


def test_truncation_flushes_the_held_partial_line_of_the_old_content():
    reader = feed(opened(resume(Position())), b"x\nhalf", b"x\nhalf").reader
    st = step(reader, Truncated(0))
    assert st.append == b"half\n" and st.reader.position.output_size == len(b"x\nhalf\n")


def test_an_endless_line_is_delivered_in_pieces_instead_of_held(monkeypatch):
    monkeypatch.setattr(core, "MAX_LINE_BYTES", 8)
    reader = opened(resume(Position()))
    content = b""
    out = b""
    for piece in (b"\rprog 10%", b"\rprog 20%", b"\rdone\n"):
        content += piece
        st = feed(reader, content, piece)
        reader, out = st.reader, out + st.append
    assert out.replace(b"\n", b"") == content.replace(b"\n", b"")
    assert out.endswith(b"\n") and reader.pending == b""
    assert reader.position.offset == len(content)


def test_reopening_the_same_file_checks_size_and_head():
    reader = feed(opened(resume(Position())), b"abc\n", b"abc\n").reader
    again = resume(reader.position)
    assert not step(again, Opened(1, 7, 4, b"abc\n", "same")).end_session
    assert step(again, Opened(1, 7, 2, b"ab", "same")).end_session  # shrank
    assert step(again, Opened(1, 7, 9, b"xyz\n", "same")).end_session  # rewritten
    gone = step(again, Opened(1, 7, 9, b"xyz\n", "old"))  # inode number reused elsewhere
    assert gone.end_session and gone.reader.position.identity is None


def test_long_lines_are_cut_at_the_same_points_whatever_the_chunking(monkeypatch):
    monkeypatch.setattr(core, "MAX_LINE_BYTES", 8)
    content = b"short\n" + b"x" * 20 + b"\n" + b"y" * 16 + b"\n" + b"z" * 8 + b"\nend\n"
    expected = b"short\nxxxxxxxx\nxxxxxxxx\nxxxx\nyyyyyyyy\nyyyyyyyy\nzzzzzzzz\nend\n"
    for size in (1, 3, 7, 8, 9, 16, 17, len(content)):
        reader, out = opened(resume(Position())), b""
        for i in range(0, len(content), size):
            st = feed(reader, content[: i + size], content[i : i + size])
            reader, out = st.reader, out + st.append
        assert out == expected, f"chunks of {size}"
        assert reader.position.offset == len(content) and reader.pending == b""
