"""Is this the model we asked for? Size, sha256 and content checks, before anything lands.

The sha256 is computed while downloading: :class:`PrefixHasher` consumes the contiguous prefix
of the part file as ranges complete (reading back from the page cache, in a thread — hashlib
releases the GIL), so verification needs no second full read unless a run resumed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from comfyfleet.errors import ChecksumMismatch, CorruptFile, NotAModel, SizeMismatch
from comfyfleet.manifest import MODEL_EXTENSIONS as COMFYUI_EXTENSIONS

HASH_CHUNK = 1024 * 1024
#: extensions whose content must be a binary model (an HTML or JSON body is an error page)
#: (ComfyUI's own list plus the formats custom nodes load)
MODEL_EXTENSIONS = COMFYUI_EXTENSIONS | {".gguf", ".onnx"}
#: a safetensors header larger than this is not a header (the format's own limit is 100 MB)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class PrefixHasher:
    """sha256 of a file's bytes ``[0, hashed)``, advanced as the done prefix grows."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hashed = 0
        self._h = hashlib.sha256()
        self._lock = asyncio.Lock()

    def _consume(self, upto: int) -> None:
        while self.hashed < upto:
            chunk = os.pread(self.fd, min(HASH_CHUNK, upto - self.hashed), self.hashed)
            if not chunk:
                raise CorruptFile("the part file is shorter than its completed ranges")
            self._h.update(chunk)
            self.hashed += len(chunk)

    async def advance(self, upto: int) -> None:
        """Hash up to ``upto`` bytes (in a thread); concurrent calls queue up."""
        async with self._lock:
            if upto > self.hashed:
                await asyncio.to_thread(self._consume, upto)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def hash_file(path: Path) -> str:
    """sha256 of a whole file (blocking; run it in a thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_size(actual: int, expected: int | None, name: str) -> None:
    if expected is not None and actual != expected:
        raise SizeMismatch(
            f"{name}: got {actual} bytes, expected {expected}",
            hint="the server sent a truncated or different file; run again to retry",
        )


def check_sha256(actual: str, expected: str | None, name: str) -> None:
    if expected and actual.lower() != expected.lower():
        raise ChecksumMismatch(
            f"{name}: sha256 {actual} does not match the expected {expected.lower()}",
            hint="the server sent different bytes; if the model was updated upstream, update "
            "sha256 in the manifest, else run again (the bad download was discarded)",
        )


def sniff(head: bytes, name: str, size: int) -> None:
    """Reject an HTML/XML/JSON page saved under a model file name."""
    if Path(name).suffix.lower() not in MODEL_EXTENSIONS:
        return
    text = head[:2048].lstrip()
    low = text[:512].lower()
    if low.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or (
        low.startswith(b"<") and b"<html" in low
    ):
        raise NotAModel(
            f"{name}: the server sent an HTML page, not a model",
            hint="usually a login or error page: check the URL and the token "
            "(HF_TOKEN / CIVITAI_TOKEN)",
        )
    if text[:1] in (b"{", b"[") and size < 1024 * 1024:
        try:
            json.loads(head)
        except ValueError:
            return
        raise NotAModel(
            f"{name}: the server sent a JSON document, not a model: {head[:200]!r}",
            hint="an API error answer; check the URL and the token",
        )


def check_safetensors(read_at, size: int, name: str) -> None:
    """The safetensors header must parse and its tensors must fit in the file.

    ``read_at(offset, length) -> bytes`` reads the candidate file.
    """
    if not name.lower().endswith((".safetensors", ".sft")):
        return

    def corrupt(why: str) -> CorruptFile:
        return CorruptFile(
            f"{name}: not a valid safetensors file ({why})",
            hint="the download is damaged or the URL points at something else; run again",
        )

    if size < 8:
        raise corrupt("shorter than the 8-byte header length")
    n = int.from_bytes(read_at(0, 8), "little")
    if n <= 0 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
        raise corrupt(f"header length {n} does not fit a {size}-byte file")
    try:
        header = json.loads(read_at(8, n))
    except (ValueError, UnicodeDecodeError):
        raise corrupt("the JSON header does not parse") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"tensor {key!r} has no data_offsets") from None
        if not (0 <= lo <= hi):
            raise corrupt(f"tensor {key!r} has invalid offsets")
        end = max(end, hi)
    if 8 + n + end > size:
        raise corrupt(f"tensors need {8 + n + end} bytes, the file has {size}")


def check_content(read_at, size: int, name: str) -> None:
    """Content sanity of a complete candidate file (HTML/JSON sniff, safetensors header)."""
    sniff(read_at(0, min(size, 4096)), name, size)
    check_safetensors(read_at, size, name)
