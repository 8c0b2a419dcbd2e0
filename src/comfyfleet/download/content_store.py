"""A content store shared by several roots on one machine: ``--content-store DIR``.

Models shared by instances are downloaded once and hard-linked into every root. Layout::

    DIR/sha256/<ab>/<sha256>     the verified bytes (one inode, linked into each root)
    DIR/urls/<key>.json          {"sha256", "size", "url", "etag"}: what a URL last held
    DIR/locks/<key>.lock         flock per content: sha256-<hex> when the sha256 is known up
                                 front, else url-<hash of the normalised URL>

Rules: nothing unverified enters the store (an entry is made only from a file the engine has
just verified and landed); an entry is linked out only after its size and sha256 are checked
again (a corrupt entry is removed and the file downloaded anew); every write is a temporary
name plus a rename; every path is built by :func:`comfyfleet.names.path_under` from hex keys.
The lock is held while one run downloads a content, so a second run waits, then links.

Everything here blocks (flock, hashing, links) except :meth:`ContentStore.hold`, which polls
the lock without blocking the event loop and can be cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from comfyfleet.download.engine import link_or_copy
from comfyfleet.download.integrity import hash_file
from comfyfleet.events import write_atomic
from comfyfleet.names import path_under
from comfyfleet.redact import redact_url

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: seconds between two tries of a held lock (a download takes minutes; a link takes ms)
LOCK_POLL = 0.1


def normalised_url(url: str) -> str:
    """``url`` as the store keys it: secrets redacted, scheme and host lower-case, no fragment."""
    parts = urlsplit(redact_url(url))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, ""))


def content_key(sha256: str | None, url: str) -> str:
    """The lock key of one content: by sha256 when known, else by the normalised URL."""
    if sha256 and _SHA256.fullmatch(sha256.lower()):
        return f"sha256-{sha256.lower()}"
    return "url-" + hashlib.sha256(normalised_url(url).encode()).hexdigest()


@dataclass(frozen=True)
class StoreEntry:
    """A verified content in the store."""

    path: Path
    sha256: str
    size: int


class ContentStore:
    """One content store directory (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).expanduser().resolve()

    # --- paths --------------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        """Where the content with ``sha256`` lives (ValueError for anything but 64 hex)."""
        sha = sha256.lower()
        if not _SHA256.fullmatch(sha):
            raise ValueError(f"not a sha256: {sha256!r}")
        return path_under(self.dir, "sha256", sha[:2], sha)

    def _url_record(self, url: str) -> Path:
        return path_under(self.dir, "urls", content_key(None, url) + ".json")

    # --- the lock -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the flock of ``key`` (wait while another process holds it; cancellable)."""
        path = path_under(self.dir, "locks", key + ".lock")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # Polled, not a blocking flock in a thread: a cancelled wait must not
                    # leave a thread that takes the lock later and never lets it go.
                    await asyncio.sleep(LOCK_POLL)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # --- reading (blocking) -------------------------------------------------------------

    def sha256_for_url(self, url: str, size: int | None, etag: str | None = None) -> str | None:
        """The sha256 a URL was last stored as; None when unknown, or when the server's size
        or ETag now differs (the URL serves other bytes than it did)."""
        try:
            doc = json.loads(self._url_record(url).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not _SHA256.fullmatch(str(doc.get("sha256", ""))):
            return None
        if size is not None and doc.get("size") != size:
            return None
        if etag and doc.get("etag") and doc["etag"] != etag:
            return None
        return str(doc["sha256"])

    def find(self, sha256: str, size: int | None) -> StoreEntry | None:
        """The entry with ``sha256``, re-checked (size, then every byte); a corrupt one is
        removed and None returned."""
        path = self.object_path(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if (size is not None and st.st_size != size) or hash_file(path) != sha256.lower():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # never linked out again; the next fetch replaces it
            return None
        return StoreEntry(path, sha256.lower(), st.st_size)

    def link_out(self, entry: StoreEntry, dest: Path) -> os.stat_result:
        """Make ``dest`` the entry's bytes (a hard link; a checked copy across filesystems)."""
        return link_or_copy(entry.path, dest, entry.sha256)

    # --- writing (blocking) -------------------------------------------------------------

    def put(
        self, verified: Path, sha256: str, size: int, url: str, etag: str | None = None
    ) -> StoreEntry:
        """Enter a file the engine has just verified (its ``sha256`` and ``size``) into the
        store, atomically; remember what ``url`` held. Call with the content's lock held."""
        dest = self.object_path(sha256)
        if not dest.exists():
            link_or_copy(verified, dest, sha256)
        record = self._url_record(url)
        record.parent.mkdir(parents=True, exist_ok=True)
        doc = {"sha256": sha256.lower(), "size": size, "url": normalised_url(url), "etag": etag}
        write_atomic(record, json.dumps(doc, sort_keys=True) + "\n")
        return StoreEntry(dest, sha256.lower(), size)
