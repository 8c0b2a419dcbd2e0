"""One HTTP exchange with bounded retries, and plain-URL resolution (HEAD, ranged-GET fallback).

Every aiohttp error is mapped here into :mod:`comfyfleet.errors` (``Unreachable``,
``ServerError``, ``RateLimited``), so nothing above sees a bare status code or an aiohttp
exception. Bodies are never downloaded: at most a small error page is read, and a response
that would stream a model is closed unread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDictProxy

from comfyfleet.errors import (
    AccessDenied,
    NotAModel,
    NotFound,
    RateLimited,
    ServerError,
    SourceError,
    Unreachable,
)
from comfyfleet.redact import redact_url
from comfyfleet.retry import backoff, parse_retry_after
from comfyfleet.sources.auth import auth_headers, headers_for_redirect
from comfyfleet.sources.base import RemoteFile
from comfyfleet.sources.filenames import filename_from_content_disposition, filename_from_url

if TYPE_CHECKING:
    from comfyfleet.manifest import ModelEntry

#: attempts for one request when the server fails (5xx, 429) or cannot be reached
DEFAULT_ATTEMPTS = 3
#: backoff ceiling of the first retry (doubled each attempt, full jitter)
BACKOFF_BASE = 0.25
#: longest Retry-After we honour while probing (a preflight must stay fast)
MAX_RETRY_AFTER = 10.0
#: per-request timeout while probing
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=15, sock_read=30)
#: body bytes read from an error or page response (enough to classify it)
BODY_PREVIEW = 4096
#: a probe: the first byte only
RANGE_PROBE = "bytes=0-0"

REDIRECTS = frozenset({301, 302, 303, 307, 308})
PAGE_TYPES = ("text/html", "application/json", "application/xhtml", "text/xml", "application/xml")


@dataclass
class Reply:
    """What a probe learnt: status, headers, final URL and a short body preview."""

    status: int
    headers: CIMultiDictProxy[str]
    url: str
    body: bytes = b""

    @property
    def location(self) -> str | None:
        """The absolute redirect target, when this is a redirect."""
        loc = self.headers.get("Location")
        return urljoin(self.url, loc) if loc and self.status in REDIRECTS else None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def looks_like_page(self) -> bool:
        """An HTML/JSON/XML page where model bytes were expected."""
        if self.content_type.startswith(PAGE_TYPES):
            return True
        head = self.body[:64].lstrip().lower()
        return head.startswith((b"<!doctype", b"<html", b'{"error', b"<?xml"))

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def file_size(self) -> int | None:
        """The whole file's size: the ``Content-Range`` total of a 206, else ``Content-Length``
        (a HEAD, or a server that ignored Range)."""
        if self.status == 206:
            return content_range_total(self.headers)
        cl = self.headers.get("Content-Length", "")
        return int(cl) if cl.isdigit() else None


def without_probe_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` minus what only a 1-byte probe sends (``Range``, ``Accept-Encoding``)."""
    return {k: v for k, v in headers.items() if k not in ("Range", "Accept-Encoding")}


async def _read_upto(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = await resp.content.read(limit - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def _once(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    read_body: bool,
    max_body: int,
) -> Reply:
    async with session.request(
        method, url, headers=headers, allow_redirects=False, timeout=PROBE_TIMEOUT
    ) as resp:
        body = b""
        if method != "HEAD":
            # A 200 to a probe may be a whole model (a server ignoring Range): read only a
            # preview of it, enough to recognise an HTML/JSON page, and never the rest.
            limit = max_body if read_body else BODY_PREVIEW
            body = await _read_upto(resp, limit if resp.status != 206 else 1)
            if not resp.content.at_eof():
                resp.close()  # drop the connection instead of draining it
        return Reply(resp.status, resp.headers, str(resp.url), body)


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    read_body: bool = False,
    max_body: int = 32 << 20,
) -> Reply:
    """One request without following redirects; 5xx/429/connection errors are retried
    ``attempts`` times with jittered backoff, then raised as ServerError/RateLimited/Unreachable.
    ``read_body`` reads up to ``max_body`` bytes of the reply (API documents); otherwise only
    a short preview of a body is read.

    Other statuses (2xx, 3xx, 4xx) are returned for the caller to classify.
    """
    safe = redact_url(url)
    last: SourceError | None = None
    for attempt in range(max(1, attempts)):
        wait = backoff(attempt, base=BACKOFF_BASE, cap=MAX_RETRY_AFTER)
        try:
            reply = await _once(session, method, url, headers, read_body, max_body)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            last = Unreachable(
                f"cannot reach {safe}: {reason or type(exc).__name__}",
                hint="check the host name and your network; the server may be down",
            )
        except aiohttp.ClientError as exc:
            last = ServerError(f"{method} {safe} failed: {exc}")
        else:
            if reply.status == 429:
                ra = parse_retry_after(reply.headers.get("Retry-After"))
                last = RateLimited(
                    f"{safe} answered 429 (rate limited / download quota)",
                    hint="wait and try again; for Civitai this is the download quota",
                    retry_after=ra,
                )
                wait = min(ra, MAX_RETRY_AFTER) if ra is not None else wait
            elif reply.status >= 500:
                ra = parse_retry_after(reply.headers.get("Retry-After"))
                last = ServerError(
                    f"{safe} kept failing: HTTP {reply.status} after {attempt + 1} attempt(s)",
                    hint="the server is failing; try again later or add a mirror",
                    retry_after=ra,
                )
                wait = min(ra, MAX_RETRY_AFTER) if ra is not None else wait
            else:
                return reply
        if attempt + 1 < attempts:
            await asyncio.sleep(wait)
    assert last is not None
    raise last


def raise_for_status(reply: Reply, what: str) -> None:
    """Classify a 4xx of a plain host (called for statuses that are not success/redirect)."""
    safe = redact_url(reply.url)
    if reply.status in (404, 410):
        raise NotFound(f"{what} not found: {safe} answered {reply.status}")
    if reply.status in (401, 403):
        raise AccessDenied(
            f"{safe} answered {reply.status} (access denied)",
            hint="the host needs credentials comfyfleet does not have; use another URL or a mirror",
        )
    raise ServerError(f"{safe} answered {reply.status}")


def content_range_total(headers: CIMultiDictProxy[str]) -> int | None:
    """The total size from ``Content-Range: bytes 0-0/12345``."""
    value = headers.get("Content-Range", "")
    total = value.rsplit("/", 1)[-1].strip()
    return int(total) if total.isdigit() else None


async def follow(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    max_redirects: int = 10,
) -> tuple[Reply, dict[str, str]]:
    """Follow redirects ourselves, dropping Authorization on any change of origin.

    Returns the final reply and the headers that were sent to its URL.
    """
    current, sent = url, dict(headers)
    for _ in range(max_redirects + 1):
        reply = await send(session, method, current, sent, attempts=attempts)
        target = reply.location
        if target is None:
            return reply, sent
        sent = headers_for_redirect(target, current, sent)
        current = target
    raise ServerError(f"too many redirects from {redact_url(url)}")


async def resolve_plain(
    session: aiohttp.ClientSession,
    entry: ModelEntry,
    url: str,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
) -> RemoteFile:
    """Resolve a plain HTTP(S) URL: HEAD (following redirects), or a 1-byte ranged GET when
    HEAD is refused; the final URL is where the bytes are fetched from."""
    headers = auth_headers(url)
    reply, sent = await follow(
        session, "HEAD", url, {**headers, "Accept-Encoding": "identity"}, attempts=attempts
    )
    if reply.status >= 400 and reply.status not in (404, 410):
        # HEAD refused (or answered oddly): ask for the first byte instead.
        reply, sent = await follow(
            session,
            "GET",
            url,
            {**headers, "Range": RANGE_PROBE, "Accept-Encoding": "identity"},
            attempts=attempts,
        )
    if reply.status not in (200, 206):
        raise_for_status(reply, "file")
    if reply.looks_like_page():
        raise NotAModel(
            f"{redact_url(url)} serves a {reply.content_type or 'web page'}, not a model file",
            hint="use the direct download link of the file (not its web page)",
        )
    size = reply.file_size
    accept_ranges = reply.status == 206 or reply.headers.get("Accept-Ranges", "") == "bytes"
    filename = (
        entry.filename
        or filename_from_content_disposition(reply.headers.get("Content-Disposition"))
        or filename_from_url(reply.url)
        or filename_from_url(url)
    )
    if not filename:
        raise NotFound(
            f"cannot tell a file name for {redact_url(url)}",
            hint='set filename = "..." in the manifest entry',
        )
    final_headers = without_probe_headers(sent)
    return RemoteFile(
        url=url,
        kind="http",
        filename=filename,
        size=size if size is not None else entry.size,
        sha256=entry.sha256,
        fetch_url=reply.url,
        fetch_headers=final_headers,
        etag=reply.headers.get("ETag"),
        accept_ranges=accept_ranges,
    )
