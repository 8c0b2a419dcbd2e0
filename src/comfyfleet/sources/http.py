"""One HTTP exchange under the retry policy, and plain-URL resolution (HEAD, ranged-GET fallback).

Every aiohttp error and every error status is mapped here, through
:mod:`comfyfleet.sources.status`, into :mod:`comfyfleet.errors`, so nothing above sees a bare
status code or an aiohttp exception. Bodies are never downloaded: at most a small error page
is read, and a response that would stream a model is closed unread.
"""

from __future__ import annotations

import asyncio
import email.utils
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDictProxy

from comfyfleet.errors import NotAModel, NotFound, ServerError
from comfyfleet.redact import redact_url
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources.auth import auth_headers, headers_for_redirect
from comfyfleet.sources.base import RemoteFile
from comfyfleet.sources.endpoints import effective_url
from comfyfleet.sources.filenames import filename_from_content_disposition, filename_from_url
from comfyfleet.sources.status import Service, classify, from_exception, retryable_status

if TYPE_CHECKING:
    from comfyfleet.manifest import ModelEntry

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


def client_timeout(policy: RetryPolicy) -> aiohttp.ClientTimeout:
    """aiohttp timeouts of one probe: connect within ``connect_timeout``, then every read
    (the reply's first byte included) within ``first_byte_timeout``."""
    return aiohttp.ClientTimeout(
        total=None, sock_connect=policy.connect_timeout, sock_read=policy.first_byte_timeout
    )


async def _once(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    read_body: bool,
    max_body: int,
    policy: RetryPolicy,
) -> Reply:
    async with session.request(
        method, url, headers=headers, allow_redirects=False, timeout=client_timeout(policy)
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
    policy: RetryPolicy,
    read_body: bool = False,
    max_body: int = 32 << 20,
) -> Reply:
    """One request without following redirects, retried under ``policy`` (connection errors,
    timeouts, 408/429/5xx), then raised as the classified SourceError. ``read_body`` reads
    up to ``max_body`` bytes of the reply (API documents); otherwise only a short preview.

    Other statuses (2xx, 3xx, 4xx) are returned for the caller to classify.
    """
    failures = 0
    while True:
        try:
            reply = await _once(session, method, url, headers, read_body, max_body, policy)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = from_exception(
                exc,
                url,
                connect_timeout=policy.connect_timeout,
                first_byte_timeout=policy.first_byte_timeout,
            )
        else:
            if not retryable_status(reply.status):
                return reply
            error = classify(reply.status, reply.headers, reply.body, False, "http", url=url)
        failures += 1
        if not error.retryable or policy.gives_up(failures):
            if failures > 1:
                error.message += f" (after {failures} attempts)"
            raise error from None
        delay = policy.delay(failures, getattr(error, "retry_after", None))
        if policy.on_retry is not None:
            policy.on_retry(error, failures, delay)
        await asyncio.sleep(delay)


def raise_for_status(reply: Reply, service: Service, token_sent: bool) -> None:
    """Raise what a non-success reply means (:func:`comfyfleet.sources.status.classify`)."""
    raise classify(reply.status, reply.headers, reply.body, token_sent, service, url=reply.url)


def refuse_content_coding(reply_headers: CIMultiDictProxy[str], url: str) -> None:
    """Model bytes must arrive as they are: any ``Content-Encoding`` is an error naming the server.

    We always send ``Accept-Encoding: identity``; a server that encodes anyway would have us
    hash (and call verified) the compressed bytes, or decompress bytes nobody vouched for.
    """
    coding = reply_headers.get("Content-Encoding", "").strip().lower()
    if coding and coding != "identity":
        raise NotAModel(
            f"{redact_url(url)} sent the file with Content-Encoding: {coding} although "
            "comfyfleet asked for identity (unencoded) bytes",
            hint="the server or a proxy in front of it re-encodes downloads; use another "
            "URL or a mirror",
        )


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
    policy: RetryPolicy,
    max_redirects: int = 10,
) -> tuple[Reply, dict[str, str]]:
    """Follow redirects ourselves, dropping Authorization on any change of origin.

    Returns the final reply and the headers that were sent to its URL.
    """
    current, sent = url, dict(headers)
    for _ in range(max_redirects + 1):
        reply = await send(session, method, current, sent, policy=policy)
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
    policy: RetryPolicy,
    notes: list[str] | None = None,
) -> RemoteFile:
    """Resolve a plain HTTP(S) URL: HEAD (following redirects), or a 1-byte ranged GET when
    HEAD is refused; the final URL is where the bytes are fetched from."""
    target = effective_url(url)
    headers = {**auth_headers(target, notes), "Accept-Encoding": "identity"}
    token_sent = "Authorization" in headers
    reply, sent = await follow(session, "HEAD", target, headers, policy=policy)
    if reply.status >= 400 and reply.status not in (404, 410):
        # HEAD refused (or answered oddly): ask for the first byte instead.
        reply, sent = await follow(
            session, "GET", target, {**headers, "Range": RANGE_PROBE}, policy=policy
        )
    if reply.status not in (200, 206):
        raise_for_status(reply, "http", token_sent and "Authorization" in sent)
    refuse_content_coding(reply.headers, reply.url)
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
    return RemoteFile(
        url=url,
        kind="http",
        filename=filename,
        size=size if size is not None else entry.size,
        sha256=entry.sha256,
        fetch_url=reply.url,
        fetch_headers=without_probe_headers(sent),
        etag=strong_validator(reply.headers),
        accept_ranges=accept_ranges,
    )


def strong_validator(headers: CIMultiDictProxy[str] | dict[str, str]) -> str | None:
    """The reply's validator for ``If-Range``: a strong ``ETag``, else ``Last-Modified`` when
    it is strong (``Date`` at least a second later, RFC 9110 §8.8.2.2); None when neither."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    modified = (headers.get("Last-Modified") or "").strip()
    if not modified:
        return None
    try:
        lm = email.utils.parsedate_to_datetime(modified)
        date = email.utils.parsedate_to_datetime(headers.get("Date") or "")
    except (TypeError, ValueError):
        return None
    return modified if (date - lm).total_seconds() >= 1 else None
