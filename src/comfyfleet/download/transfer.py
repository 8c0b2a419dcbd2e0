"""One HTTP GET of one byte range (or the whole body) into a part file.

aiohttp facts this module is built on (reference/downloaders.md §4): its default
``ClientTimeout(total=300)`` kills long downloads, so sessions use ``total=None``; it asks for
gzip by default, which makes some CDNs ignore ``Range`` — we send ``Accept-Encoding: identity``
and check that a ranged reply is a 206 with the matching ``Content-Range``; a mid-body drop is
a ``ClientPayloadError`` and the bytes before it are good, so they are kept and the range
resumes from the last byte written. Stalls are detected by throughput, not by a read timeout:
a connection below ``min_speed`` over ``stall_timeout`` is dropped (:class:`StallWatch`);
a server that never answers fails within ``connect_timeout`` + ``first_byte_timeout``. Any
``Content-Encoding`` is refused (the bytes hashed must be the file's own), and a resumed range
carries ``If-Range`` with the validator of the bytes already written.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from comfyfleet.download.integrity import MODEL_EXTENSIONS
from comfyfleet.download.partfile import PartFile
from comfyfleet.download.segments import Claim, Segments
from comfyfleet.errors import DownloadError, NotAModel, ServerError, Stalled
from comfyfleet.redact import redact_url
from comfyfleet.retry import CONNECT_TIMEOUT, FIRST_BYTE_TIMEOUT
from comfyfleet.sources.auth import may_carry_token
from comfyfleet.sources.base import USER_AGENT, RemoteFile
from comfyfleet.sources.endpoints import effective_url, origin
from comfyfleet.sources.http import refuse_content_coding, strong_validator
from comfyfleet.sources.status import Service, classify, from_exception

#: bytes gathered from the socket before one pwrite (in a thread): big enough to amortise the
#: thread hop, small enough that memory stays bounded (≤ this × connections)
WRITE_BUFFER = 256 * 1024
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class RangeIgnored(DownloadError):
    """The server answered a ranged GET with 200 (whole body): only one stream is possible."""


class ObjectChanged(RangeIgnored):
    """A ranged reply carries another validator than the bytes already written: the file
    changed on the server (and the server ignored ``If-Range``). Never spliced: restarted."""


class Dropped(DownloadError):
    """The connection broke before the range was complete (retried from the last byte)."""


def session_timeout() -> aiohttp.ClientTimeout:
    """No total timeout (a 25 GB file takes long); each request sets its own connect and
    first-byte timeouts (:class:`TransferSettings`)."""
    return aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=CONNECT_TIMEOUT, sock_read=None
    )


def service_of(remote: RemoteFile) -> Service:
    """Who serves ``remote``'s bytes: the CDN a hub (or host) redirected to, or the host itself."""
    if origin(remote.fetch_url) != origin(effective_url(remote.url)):
        return "cdn"
    return remote.kind


class StallWatch:
    """Drops a connection whose throughput stays below ``min_speed`` for ``stall_timeout``.

    A timer samples the byte count a few times per window (no per-chunk timers); when the
    bytes over the last ``stall_timeout`` seconds are under ``min_speed × stall_timeout`` it
    fires the ``asyncio.timeout`` the reader runs under.
    """

    def __init__(self, stall_timeout: float, min_speed: int) -> None:
        self.window = max(0.05, stall_timeout)
        self.min_speed = min_speed
        self.received = 0
        self.stalled = False
        self._samples: list[tuple[float, int]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._cm: asyncio.Timeout | None = None

    def start(self, cm: asyncio.Timeout) -> None:
        loop = asyncio.get_running_loop()
        self._cm = cm
        self._samples = [(loop.time(), 0)]
        self._handle = loop.call_later(self.window / 4, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._samples.append((now, self.received))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.pop(0)
        t0, b0 = self._samples[0]
        if now - t0 >= self.window * 0.999 and (self.received - b0) < self.min_speed * (now - t0):
            self.stalled = True
            if self._cm is not None:
                self._cm.reschedule(now)
            return
        self._handle = loop.call_later(self.window / 4, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass
class TransferSettings:
    """The per-connection limits of one download (from the manifest's ``[download]``)."""

    stall_timeout: float
    min_speed: int
    connect_timeout: float = CONNECT_TIMEOUT
    first_byte_timeout: float = FIRST_BYTE_TIMEOUT

    @classmethod
    def from_settings(cls, settings: object) -> TransferSettings:
        """From a :class:`comfyfleet.manifest.DownloadSettings`."""
        return cls(
            settings.stall_timeout,  # type: ignore[attr-defined]
            settings.min_speed,  # type: ignore[attr-defined]
            settings.connect_timeout,  # type: ignore[attr-defined]
            settings.first_byte_timeout,  # type: ignore[attr-defined]
        )


def request_headers(remote: RemoteFile) -> dict[str, str]:
    """What a data request sends: our User-Agent, the resolved headers, identity coding.

    Authorization is dropped where a token may not go (plain http off loopback), whatever
    the resolver decided: the rule holds at the last step before the wire.
    """
    headers = {"User-Agent": USER_AGENT, **remote.fetch_headers}
    if not may_carry_token(remote.fetch_url):
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    headers["Accept-Encoding"] = "identity"
    return headers


def _check_content_type(resp: aiohttp.ClientResponse, filename: str) -> None:
    ctype = resp.headers.get("Content-Type", "").lower()
    if Path(filename).suffix.lower() in MODEL_EXTENSIONS and ctype.startswith(
        ("text/html", "application/xhtml")
    ):
        raise NotAModel(
            f"{filename}: the server sent an HTML page ({ctype}), not a model",
            hint="usually a login or error page: check the URL and the token "
            "(HF_TOKEN / CIVITAI_TOKEN)",
        )


async def _raise_for_status(
    resp: aiohttp.ClientResponse, remote: RemoteFile, headers: dict[str, str]
) -> None:
    if resp.status in (200, 206):
        return
    try:
        body = await resp.content.read(512)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    token_sent = "Authorization" in headers
    raise classify(
        resp.status, resp.headers, body, token_sent, service_of(remote), url=remote.fetch_url
    )


async def _open(
    session: aiohttp.ClientSession,
    remote: RemoteFile,
    headers: dict[str, str],
    settings: TransferSettings,
) -> aiohttp.ClientResponse:
    """GET ``remote.fetch_url`` up to its reply's headers, within the connect and first-byte
    timeouts; then the status, the content coding and the content type are checked."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout)
    try:
        async with asyncio.timeout(settings.connect_timeout + settings.first_byte_timeout):
            resp = await session.get(remote.fetch_url, headers=headers, timeout=timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise from_exception(
            exc,
            remote.fetch_url,
            connect_timeout=settings.connect_timeout,
            first_byte_timeout=settings.first_byte_timeout,
        ) from None
    try:
        await _raise_for_status(resp, remote, headers)
        refuse_content_coding(resp.headers, remote.fetch_url)
        _check_content_type(resp, remote.filename)
    except BaseException:
        resp.close()
        raise
    return resp


def _check_validator(
    resp: aiohttp.ClientResponse, part: PartFile, sent: str | None, url: str
) -> None:
    """Learn the reply's validator for the part file, or refuse a 206 of another version."""
    theirs = strong_validator(resp.headers)
    if theirs is None:
        return
    if sent is not None and theirs != sent:
        raise ObjectChanged(
            f"{redact_url(url)} answered If-Range {sent} with a range of {theirs}: the file "
            "changed on the server; restarting it"
        )
    if part.identity.etag is None:
        part.identity.etag = theirs  # saved with the next sidecar: a resume sends it


async def fetch_range(
    session: aiohttp.ClientSession,
    remote: RemoteFile,
    seg: Segments,
    claim: Claim,
    part: PartFile,
    settings: TransferSettings,
    *,
    if_range: str | None,
    on_bytes: Callable[[int], None],
) -> None:
    """GET ``[claim.pos, claim.end)`` and write it; return when the claim is done or stolen.

    Raises :class:`RangeIgnored` on a 200, :class:`Dropped`/:class:`Stalled` when the
    connection breaks (the bytes before the break are kept), or a classified SourceError.
    """
    headers = request_headers(remote)
    # A thief may shrink claim.end while this request is in flight: check the reply against
    # what was asked, and stop writing where the claim ends.
    first, last = claim.pos, claim.end - 1
    headers["Range"] = f"bytes={first}-{last}"
    # The validator of the bytes already in the part file: a changed object then answers
    # 200 (or another validator) instead of splicing its bytes onto ours.
    validator = if_range or part.identity.etag
    if validator:
        headers["If-Range"] = validator
    watch = StallWatch(settings.stall_timeout, settings.min_speed)
    buf = bytearray()
    resp: aiohttp.ClientResponse | None = None
    done = False

    async def flush() -> bool:
        """Write the buffer at the claim's position; False if the claim was cut short."""
        nonlocal buf
        if not buf:
            return True
        n = seg.reserve(claim, len(buf))
        if n:
            await asyncio.to_thread(part.pwrite, memoryview(buf)[:n], claim.pos)
            on_bytes(seg.advance(claim, n))
        whole = n == len(buf)
        buf = bytearray()
        return whole and not claim.closed

    try:
        async with asyncio.timeout(None) as cm:
            watch.start(cm)
            try:
                resp = await _open(session, remote, headers, settings)
                if resp.status == 200:
                    raise RangeIgnored(f"{redact_url(remote.fetch_url)} ignored the Range header")
                _check_validator(resp, part, validator, remote.fetch_url)
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if (
                    not m
                    or int(m.group(1)) != first
                    or int(m.group(2)) != last
                    or (m.group(3) != "*" and int(m.group(3)) != seg.size)
                ):
                    raise ServerError(
                        f"{redact_url(remote.fetch_url)} answered bytes={first}-{last} "
                        "with Content-Range "
                        f"{resp.headers.get('Content-Range')!r}"
                    )
                async for chunk in resp.content.iter_any():
                    watch.received += len(chunk)
                    buf += chunk
                    if len(buf) >= WRITE_BUFFER and not await flush():
                        break
                    if claim.closed:
                        break
                else:
                    done = True
                await flush()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                if watch.stalled:
                    raise TimeoutError from None
                await flush()
                raise Dropped(
                    f"connection to {redact_url(remote.fetch_url)} dropped at byte {claim.pos} "
                    f"({type(exc).__name__})"
                ) from None
    except TimeoutError:
        await flush()
        if watch.stalled:
            raise Stalled(
                f"below {settings.min_speed} B/s for {settings.stall_timeout:g}s at byte "
                f"{claim.pos} of {redact_url(remote.fetch_url)}; range requeued",
            ) from None
        raise
    finally:
        watch.stop()
        if resp is not None:
            if done:
                resp.release()
            else:
                resp.close()  # a partially read body: the connection cannot be reused
    if done and claim.remaining and not claim.closed:
        raise Dropped(
            f"{redact_url(remote.fetch_url)} ended the body early at byte {claim.pos} "
            f"of range ending {claim.end}"
        )


async def fetch_whole(
    session: aiohttp.ClientSession,
    remote: RemoteFile,
    part: PartFile,
    settings: TransferSettings,
    *,
    on_chunk: Callable[[bytes], None],
) -> int:
    """GET the whole body in one stream (no ranges) and write it from offset 0.

    ``on_chunk`` runs in the writer thread (hashing in order). Returns the bytes written.
    """
    headers = request_headers(remote)
    watch = StallWatch(settings.stall_timeout, settings.min_speed)
    written = 0
    buf = bytearray()

    def write(data: bytes, offset: int) -> None:
        part.pwrite(data, offset)
        on_chunk(data)

    try:
        async with asyncio.timeout(None) as cm:
            watch.start(cm)
            resp = await _open(session, remote, headers, settings)
            async with resp:
                try:
                    async for chunk in resp.content.iter_any():
                        watch.received += len(chunk)
                        buf += chunk
                        if len(buf) >= WRITE_BUFFER:
                            data, buf = bytes(buf), bytearray()
                            await asyncio.to_thread(write, data, written)
                            written += len(data)
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                    if watch.stalled:
                        raise TimeoutError from None
                    raise Dropped(
                        f"connection to {redact_url(remote.fetch_url)} dropped after "
                        f"{written + len(buf)} bytes of a single-stream download"
                    ) from None
                if buf:
                    await asyncio.to_thread(write, bytes(buf), written)
                    written += len(buf)
    except TimeoutError:
        if watch.stalled:
            raise Stalled(
                f"below {settings.min_speed} B/s for {settings.stall_timeout:g}s in a "
                f"single-stream download of {redact_url(remote.fetch_url)}"
            ) from None
        raise
    finally:
        watch.stop()
    return written
