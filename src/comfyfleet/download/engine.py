"""Download one model file from its resolved source: ranged connections, retries, verify, land.

:class:`FileDownload` owns one file's part file, its :class:`Segments` and its connections.
Up to ``connections_per_file`` workers take claims; a worker whose connection breaks gives
its remainder back and retries after a backoff, so a range is "retried elsewhere". The
sha256 of the done prefix is computed while the bytes arrive. Nothing reaches the final path
before size, sha256 and content checks pass; then fsync, ``os.replace``, directory fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from comfyfleet.download.integrity import (
    PrefixHasher,
    check_content,
    check_sha256,
    check_size,
)
from comfyfleet.download.partfile import Identity, PartFile
from comfyfleet.download.segments import Segments
from comfyfleet.download.transfer import (
    Dropped,
    RangeIgnored,
    TransferSettings,
    fetch_range,
    fetch_whole,
)
from comfyfleet.errors import (
    ChecksumMismatch,
    DownloadError,
    RateLimited,
    ServerError,
    SignatureExpired,
    SourceError,
    Stalled,
    Unreachable,
    disk_full,
    first_error,
)
from comfyfleet.manifest import DownloadSettings, ModelEntry
from comfyfleet.redact import redact_url
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources.base import RemoteFile

#: never split a range below this (one request per MiB is pure overhead)
MIN_SPLIT = 1024 * 1024
#: how often the sidecar is rewritten while bytes arrive (a crash loses at most this much)
SIDECAR_EVERY = 1.0
#: the contiguous prefix is hashed in steps of at least this (fewer thread hops)
HASH_STEP = 8 * 1024 * 1024

RETRYABLE = (
    Stalled,
    Dropped,
    RateLimited,
    ServerError,
    SignatureExpired,
    Unreachable,
    TimeoutError,
    aiohttp.ClientError,
)


@dataclass
class Verified:
    """A file that landed verified at ``path``; ``stat`` is the landed inode's."""

    path: Path
    size: int
    sha256: str
    downloaded: int
    stat: os.stat_result


#: stalls on one source before a file moves to its next mirror (when it has one)
STALLS_BEFORE_MIRROR = 2


class SourceSlow(DownloadError):
    """This source keeps stalling and the file has a mirror: move on (the part file is kept)."""


class Hooks:
    """What one file's download reports to the scheduler (events, progress, errors.log)."""

    def started(self, dl: FileDownload, total: int | None, resumed: int) -> None: ...
    def progress(self, dl: FileDownload, n: int) -> None: ...
    def retry(self, dl: FileDownload, exc: BaseException, attempt: int, delay: float) -> None: ...


class FileDownload:
    """One file from one source (a primary URL or a mirror) to its verified final path."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        entry: ModelEntry,
        remote: RemoteFile,
        dest: Path,
        settings: DownloadSettings,
        hooks: Hooks,
        reresolve: Callable[[], Awaitable[RemoteFile]],
        *,
        has_mirror: bool = False,
    ) -> None:
        self.session = session
        self.entry = entry
        self.remote = remote
        self.dest = dest
        self.settings = settings
        self.hooks = hooks
        self.reresolve = reresolve
        self.size: int | None = entry.size if entry.size is not None else remote.size
        self.sha256 = entry.sha256 or (remote.sha256.lower() if remote.sha256 else None)
        self.part = PartFile(
            dest, Identity(url=redact_url(entry.url), size=self.size, sha256=self.sha256,
                           etag=remote.etag)
        )  # fmt: skip
        self.seg: Segments | None = None
        self.has_mirror = has_mirror
        self.stalls = 0
        self.failures = 0
        self.attempts = 0
        self.downloaded = 0
        self._wake = asyncio.Event()
        self._hash_wake = asyncio.Event()
        self._saved_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._tx = TransferSettings.from_settings(settings)
        #: the one retry policy (comfyfleet.retry): data requests are retried here only
        self.policy = RetryPolicy.for_download(settings)

    @property
    def done_bytes(self) -> int:
        return self.seg.done_bytes if self.seg else 0

    # --- entry point -------------------------------------------------------------------

    async def run(self) -> Verified:
        """Download, verify and land the file; raise a ComfyfleetError when it cannot."""
        if self.entry.size is not None and self.remote.size not in (None, self.entry.size):
            raise DownloadError(
                f"{self.dest.name}: the server's file is {self.remote.size} bytes, the manifest "
                f"says {self.entry.size}",
                hint="the URL points at a different file than the manifest expects; fix the "
                "manifest's size/url",
            )
        try:
            if self.size and self.remote.accept_ranges:
                try:
                    digest = await self._ranged()
                except RangeIgnored as exc:
                    self.hooks.retry(self, exc, self.attempts, 0.0)
                    digest = await self._whole()
            else:
                digest = await self._whole()
            landed = await asyncio.to_thread(self._verify_and_land, digest)
        except BaseException:
            self._checkpoint(force=True)
            self.part.close()
            raise
        assert self.size is not None
        return Verified(self.dest, self.size, digest, self.downloaded, landed)

    # --- ranged (segmented) mode -------------------------------------------------------

    async def _ranged(self) -> str:
        assert self.size
        resumed = await asyncio.to_thread(self.part.resume_ranges)
        await asyncio.to_thread(self.part.open, keep=bool(resumed))
        seg = self.seg = Segments(
            self.size, segment_size=self.settings.segment_size, min_split=MIN_SPLIT, done=resumed
        )
        # If-Range only when continuing bytes from an earlier run: a changed object then
        # answers 200 and we start over instead of splicing old and new bytes.
        # (the validator is the sidecar's: the data server's own, learnt from its first reply)
        if_range = (
            self.part.identity.etag if resumed and self._strong(self.part.identity.etag) else None
        )
        self.hooks.started(self, self.size, seg.done_bytes)
        assert self.part.fd is not None
        hasher = PrefixHasher(self.part.fd)
        left = self.size - seg.done_bytes
        n = max(1, min(self.settings.connections_per_file, math.ceil(left / MIN_SPLIT)))
        state = {"if_range": if_range}
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(self._worker(state))
                tg.create_task(self._hash_loop(hasher))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        await hasher.advance(self.size)
        return hasher.hexdigest()

    @staticmethod
    def _strong(etag: str | None) -> bool:
        return bool(etag) and not etag.startswith("W/")  # type: ignore[union-attr]

    async def _hash_loop(self, hasher: PrefixHasher) -> None:
        assert self.seg is not None
        while hasher.hashed < self.seg.size:
            prefix = self.seg.contiguous_prefix()
            if prefix - hasher.hashed >= HASH_STEP or (prefix == self.seg.size):
                await hasher.advance(prefix)
                continue
            self._hash_wake.clear()
            await self._hash_wake.wait()

    def _on_bytes(self, n: int) -> None:
        if n:
            self.downloaded += n
            self.hooks.progress(self, n)
            self._hash_wake.set()
            self._checkpoint()

    def _checkpoint(self, *, force: bool = False) -> None:
        """Rewrite the sidecar (throttled): a killed run resumes from here."""
        if self.seg is None or self.part.fd is None:
            return
        now = time.monotonic()
        if force or now - self._saved_at >= SIDECAR_EVERY:
            self._saved_at = now
            self.part.save(self.seg.done)

    async def _worker(self, state: dict[str, Any]) -> None:
        seg = self.seg
        assert seg is not None
        while not seg.complete:
            claim = seg.claim()
            if claim is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            start = claim.pos
            delay = 0.0
            try:
                await fetch_range(
                    self.session, self.remote, seg, claim, self.part, self._tx,
                    if_range=state["if_range"], on_bytes=self._on_bytes,
                )  # fmt: skip
                self.failures = 0
            except RangeIgnored:
                if not state["if_range"]:
                    raise
                # The object changed since the earlier run (If-Range failed): start over.
                state["if_range"] = None
                self.part.identity.etag = None  # the old version's: learn the new one
                seg.reset()
                self._checkpoint(force=True)
                self.hooks.retry(self, DownloadError("the file changed on the server since the "
                                 "earlier run; restarting it"), self.attempts, 0.0)  # fmt: skip
            except RETRYABLE as exc:
                delay = await self._failed(exc, progressed=claim.pos > start)
            finally:
                seg.release(claim)
                self._wake.set()
            if delay:
                await asyncio.sleep(delay)
        self._wake.set()
        self._hash_wake.set()

    async def _failed(self, exc: BaseException, *, progressed: bool) -> float:
        """Count a failed attempt; raise when the budget is spent; return the wait."""
        self.attempts += 1
        self.failures = 0 if progressed else self.failures + 1
        if self.policy.gives_up(self.failures):
            if isinstance(exc, DownloadError | SourceError):
                raise exc
            raise DownloadError(
                f"{self.dest.name}: gave up after {self.settings.retries} retries: "
                f"{type(exc).__name__}: {exc}",
                hint="the server kept failing; run again later or add a mirror",
            ) from None
        if isinstance(exc, Stalled):
            self.stalls += 1
            if self.has_mirror and self.stalls >= STALLS_BEFORE_MIRROR:
                raise SourceSlow(
                    f"{self.dest.name}: {redact_url(self.remote.fetch_url)} stalled "
                    f"{self.stalls} times ({exc})"
                ) from None
        if isinstance(exc, SignatureExpired):
            await self._refresh()
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is None and (progressed or isinstance(exc, Stalled)):
            delay = 0.0  # resume the range at once (another connection may take it)
        else:
            delay = self.policy.delay(self.failures, retry_after)
        self.hooks.retry(self, exc, self.attempts, delay)
        return delay

    async def _refresh(self) -> None:
        """Resolve the original URL again (a signed CDN URL expired); once for all workers."""
        stale = self.remote
        async with self._refresh_lock:
            if self.remote is stale:
                self.remote = await self.reresolve()

    # --- single-stream mode ------------------------------------------------------------

    async def _whole(self) -> str:
        """One stream from byte 0 (no ranges: unknown size or a server that ignores Range)."""
        self.hooks.started(self, self.size, 0)
        while True:
            self.seg = None
            await asyncio.to_thread(self._restart_part)
            h = hashlib.sha256()
            try:
                written = await fetch_whole(
                    self.session, self.remote, self.part, self._tx, on_chunk=h.update
                )
            except RETRYABLE as exc:
                # Any bytes written are discarded: without ranges we must start from 0 again.
                delay = await self._failed(exc, progressed=False)
                await asyncio.sleep(delay)
                continue
            self._on_bytes(written)
            if self.size is None:
                self.size = written
                self.part.identity.size = written
            check_size(written, self.size, self.dest.name)
            return h.hexdigest()

    def _restart_part(self) -> None:
        self.part.discard()
        self.part.open(keep=False)

    # --- verify and land ---------------------------------------------------------------

    def _verify_and_land(self, digest: str) -> os.stat_result:
        """Size, sha256 and content checks on the part file; then the atomic rename."""
        assert self.size is not None and self.part.fd is not None
        try:
            if self.seg is not None:
                check_size(self.seg.done_bytes, self.size, self.dest.name)
            check_sha256(digest, self.sha256, self.dest.name)
            check_content(self.part.read, self.size, self.dest.name)
        except DownloadError:
            self.part.discard()  # known-bad bytes are never resumed
            raise
        except SourceError:
            self.part.discard()
            raise
        try:
            return self.part.finalize()
        except OSError as exc:
            full = disk_full(exc, self.dest.parent)
            if full is not None:
                raise full from None
            raise DownloadError(f"cannot move {self.part.path} into place: {exc}") from None


def link_or_copy(src: Path, dest: Path, sha256: str | None) -> os.stat_result:
    """Make ``dest`` the same bytes as ``src`` (a hard link, else a copy checked against
    ``sha256``), atomically; return the stat of what landed. Blocking: run it in a thread."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link.part")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        digest = _copy_hashed(src, tmp)
        if sha256 and digest != sha256:
            tmp.unlink()
            raise ChecksumMismatch(
                f"{dest.name}: the copy of {src} does not hash to {sha256}",
                hint=f"{src} changed while it was copied; run again",
            ) from None
    landed = os.stat(tmp)
    os.replace(tmp, dest)
    return landed


def _copy_hashed(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` (fsynced), hashing the bytes as they are written."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(HASH_STEP):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()
