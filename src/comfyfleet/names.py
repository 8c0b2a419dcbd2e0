"""The plain-name rule for everything that becomes a path segment or starts a log line.

Strangers choose model filenames (URLs, Content-Disposition), folder keys (shared workflows)
and node names (repo URLs). Each passes :func:`plain_name` once, at the boundary; every path
the provisioner writes is built by :func:`path_under`, which proves it stays below its root,
so a future key cannot reopen a traversal hole. :func:`escape_controls` makes any value safe
to print on one line of a human log.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

MAX_NAME_BYTES = 255  # NAME_MAX on Linux filesystems
#: a model filename leaves room for the engine's ``.part.json`` and temporary-file affixes,
#: so a long name is refused at the boundary, not by the filesystem halfway through a download
MAX_FILENAME_BYTES = MAX_NAME_BYTES - 32

# Bidi overrides/isolates and marks: they reorder what a person reads in a log or a listing.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UnsafeName(ValueError):
    """A value that would not be a plain name (a path segment with no surprises)."""


def _bad_char(value: str) -> str | None:
    for ch in value:
        if _CONTROL.match(ch):
            return f"a control character (U+{ord(ch):04X})"
        if ch in _BIDI:
            return f"a bidirectional-text override (U+{ord(ch):04X})"
        if unicodedata.category(ch) in {"Zl", "Zp"}:
            return f"a line separator (U+{ord(ch):04X})"
    return None


def plain_name(value: str, *, what: str = "name", max_bytes: int = MAX_NAME_BYTES) -> str:
    """Return ``value`` if it is a plain name; raise :class:`UnsafeName` saying why not.

    Plain: not empty, not ``.`` or ``..``, no ``/`` or ``\\``, no ``..`` anywhere, no control,
    bidi or line-separator character, no leading/trailing space, at most ``max_bytes`` (255)
    UTF-8 bytes.
    """
    if not isinstance(value, str) or not value:
        raise UnsafeName(f"{what} must not be empty")
    if "/" in value or "\\" in value:
        raise UnsafeName(f"{what} {escape_controls(value)!r} must not contain '/' or '\\'")
    if ".." in value or value == ".":
        raise UnsafeName(f"{what} {escape_controls(value)!r} must not be '.' or contain '..'")
    bad = _bad_char(value)
    if bad:
        raise UnsafeName(f"{what} {escape_controls(value)!r} contains {bad}")
    if value != value.strip():
        raise UnsafeName(f"{what} {value!r} must not start or end with white space")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise UnsafeName(f"{what} is longer than {max_bytes} bytes (UTF-8)")
    return value


def plain_filename(value: str) -> str:
    """:func:`plain_name` for a model file's name (at most :data:`MAX_FILENAME_BYTES`)."""
    return plain_name(value, what="filename", max_bytes=MAX_FILENAME_BYTES)


def plain_subpath(value: str, *, what: str = "subfolder") -> tuple[str, ...]:
    """Split ``a/b`` into plain segments (``""`` gives ``()``); raise UnsafeName if one is bad."""
    if value == "":
        return ()
    return tuple(plain_name(part, what=f"{what} segment") for part in value.split("/"))


def path_under(root: Path, *parts: str) -> Path:
    """``root / parts…`` after checking each part is plain and the result stays under ``root``.

    Symlinks already on disk are resolved too: a folder that is a link out of the root is
    refused, not followed.
    """
    for part in parts:
        plain_name(part, what="path segment")
    path = root.joinpath(*parts)
    base = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        raise UnsafeName(f"{path} resolves to {real}, outside {base}")
    return path


def escape_controls(text: str) -> str:
    """``text`` with control, bidi and line-separator characters shown as ``\\xNN``/``\\uNNNN``."""

    def esc(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE_CHARS.sub(esc, text)


_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(_BIDI)) + "]")
