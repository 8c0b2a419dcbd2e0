"""What the model server holds and records: stored files, request records, test models."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.testing.modelserver.faults import Faults


def make_safetensors(size: int, seed: int = 0) -> bytes:
    """A valid safetensors file of ``size`` bytes (at least the header's length)."""
    header_obj: dict[str, Any] = {
        "__metadata__": {"generator": "comfyfleet-test", "seed": str(seed)}
    }
    n = 0
    for _ in range(3):  # the header length depends on n's digits: settle it
        header_obj["weight"] = {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}
        raw = json.dumps(header_obj, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        n = max(0, size - 8 - len(raw))
    header_obj["weight"] = {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}
    raw = json.dumps(header_obj, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    body = random.Random(seed).randbytes(n)
    return len(raw).to_bytes(8, "little") + raw + body


@dataclass
class StoredFile:
    """Bytes the server holds, from memory or a file on disk."""

    data: bytes | None = None
    path: Path | None = None
    faults: Faults = field(default_factory=Faults)
    content_disposition: str | None = None
    requests_seen: int = 0
    #: bumped by :meth:`replace`: the ETag changes with the bytes, as a real server's does
    version: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            return os.pread(fh.fileno(), end - start, start)

    def replace(self, data: bytes) -> None:
        """Serve other bytes from now on (a file updated upstream under the same URL)."""
        self.data, self.path = bytes(data), None
        self.version += 1

    @property
    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


@dataclass
class RequestRecord:
    """One request the server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")
