"""The checkpoint file: one JSON document, replaced atomically (temp, fsync, rename, dir fsync).

Exactly-once rests on the order of writes (reference/logstream.md §4.3): LOCAL is appended and
fsynced first, then this file records the new remote offset *and* LOCAL's size. On start LOCAL
is cut back to the recorded size, so bytes written after the last checkpoint are re-read from
the recorded offset instead of duplicated.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from comfyfleet.errors import UsageError
from comfyfleet.logstream.core import Counters, FileIdentity, Position

VERSION = 1


def default_state_path(output: Path) -> Path:
    """``LOCAL.checkpoint`` next to the output file."""
    return output.with_name(output.name + ".checkpoint")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def encode(position: Position, *, source: str) -> dict[str, Any]:
    """The JSON document for ``position`` (``source`` names host and path, to refuse mixing)."""
    ident = position.identity
    return {
        "version": VERSION,
        "source": source,
        "identity": None
        if ident is None
        else {"dev": ident.dev, "ino": ident.ino, "head": ident.head.hex()},
        "offset": position.offset,
        "output_size": position.output_size,
        "counters": asdict(position.counters),
    }


def decode(doc: dict[str, Any]) -> tuple[Position, str]:
    """Position and source from a checkpoint document; ValueError when malformed."""
    if doc.get("version") != VERSION:
        raise ValueError(f"unsupported checkpoint version {doc.get('version')!r}")
    raw = doc["identity"]
    ident = (
        None
        if raw is None
        else FileIdentity(int(raw["dev"]), int(raw["ino"]), bytes.fromhex(raw["head"]))
    )
    counters = Counters(**doc.get("counters", {}))
    pos = Position(ident, int(doc["offset"]), int(doc["output_size"]), counters)
    if pos.offset < 0 or pos.output_size < 0:
        raise ValueError("negative offset or size")
    return pos, str(doc.get("source", ""))


def save(path: Path, position: Position, *, source: str) -> None:
    """Write the checkpoint atomically; LOCAL must already be fsynced."""
    save_document(path, encode(position, source=source))


def save_document(path: Path, doc: dict[str, Any]) -> None:
    """Write an encoded checkpoint atomically (temp, fsync, rename, directory fsync)."""
    tmp = _tmp(path)
    data = json.dumps(doc).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_document(path: Path) -> dict[str, Any] | None:
    """The last checkpoint document, or None when there is none.

    A complete temp file left by a crash between its fsync and the rename is newer than the
    main file, so it wins (Vector's checkpointer does the same); a torn one is ignored.
    """
    for candidate in (_tmp(path), path):
        try:
            doc = json.loads(candidate.read_bytes())
            decode(doc)
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if candidate == path:
                raise UsageError(
                    f"checkpoint {path} is unreadable ({exc})",
                    hint="delete it to start again from the beginning of the remote log",
                ) from exc
            continue
        return doc
    return None


def position_of(doc: dict[str, Any], *, source: str, where: str) -> Position:
    """The position a checkpoint document records; UsageError when it is another log's."""
    pos, recorded = decode(doc)
    if recorded and recorded != source:
        raise UsageError(
            f"checkpoint {where} belongs to {recorded}, not {source}",
            hint="use another --state file or --output for a different host or path",
        )
    return pos


def load(path: Path, *, source: str) -> Position | None:
    """The position of the last checkpoint at ``path``, or None when there is none."""
    doc = load_document(path)
    return None if doc is None else position_of(doc, source=source, where=str(path))


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; Vector skips this step.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
