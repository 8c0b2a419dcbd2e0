"""Serving one stored file's bytes (Range, If-Range) with the misbehaviour a test injects."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from comfyfleet.testing.modelserver.files import StoredFile


@dataclass
class Faults:
    """Misbehaviour injected into the serving of one file's bytes."""

    #: close the connection after this many body bytes, on the first ``reset_times`` requests
    reset_after: int | None = None
    reset_times: int = 1
    #: answer the first requests with these statuses: ``[(503, "2"), (429, None)]``
    statuses: list[tuple[int, str | None]] = field(default_factory=list)
    #: the methods ``statuses`` answer (``("GET",)``: a HEAD probe passes, the download fails)
    status_methods: tuple[str, ...] = ("GET", "HEAD")
    #: after this many body bytes, send nothing for ``stall_seconds`` (first ``stall_times``)
    stall_after: int | None = None
    stall_seconds: float = 30.0
    stall_times: int = 1
    #: answer a ranged GET with 200 and the whole body
    ignore_range: bool = False
    #: serve different bytes of the same size
    corrupt: bool = False
    #: serve an HTML page instead of the file (status 200)
    html: bool = False
    #: declare the full length but send only this many bytes, then close (first ``truncate_times``)
    truncate: int | None = None
    truncate_times: int = 1
    #: bytes per second per connection (None = as fast as possible)
    rate: int | None = None
    #: delay before answering any request, in seconds
    latency: float = 0.0
    #: HEAD is refused with 405
    no_head: bool = False
    #: answer 403 (expired signature) for the first ``expired_times`` requests (CDN objects)
    expired_times: int = 0
    #: send the body in this content coding (``"gzip"``) whatever the client's Accept-Encoding
    content_coding: str | None = None
    #: send no validator (no ETag, no Last-Modified): a resume cannot tell versions apart
    no_validator: bool = False
    #: answer a ranged GET with 206 even when its If-Range no longer matches (a lying server)
    ignore_if_range: bool = False
    #: answer nothing at all (headers included) to the first ``silent_times`` requests
    silent_times: int = 0


def etag_of(stored: StoredFile, sha256: str) -> str:
    """The strong ETag of the stored bytes (changes when the bytes are replaced)."""
    if not stored.version:
        return f'"{sha256[:32]}"'
    return f'"{hashlib.sha1(f"{sha256}:{stored.version}".encode()).hexdigest()[:32]}"'


def _parse_range(rng: str, size: int) -> tuple[int, int]:
    """``[start, end)`` of a single ``bytes=`` range; ValueError when it is not one."""
    unit, spec = rng.split("=", 1)
    first, last = spec.split("-", 1)
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError(rng)
    if first == "":
        return max(0, size - int(last)), size
    return int(first), (min(size, int(last) + 1) if last else size)


async def serve(request: web.Request, stored: StoredFile, sha256: str) -> web.StreamResponse:
    """Serve a file's bytes with Range/If-Range and the file's injected faults."""
    f = stored.faults
    if f.latency:
        await asyncio.sleep(f.latency)
    if f.silent_times > 0:
        f.silent_times -= 1
        await asyncio.Event().wait()  # until the client gives up and the server is stopped
    if request.method == "HEAD" and f.no_head:
        return web.Response(status=405)
    if request.method not in {"GET", "HEAD"}:
        return web.Response(status=405)
    if f.statuses and request.method in f.status_methods:
        status, retry_after = f.statuses.pop(0)
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.Response(status=status, text=f"error {status}", headers=headers)
    if f.html:
        return web.Response(
            text="<!DOCTYPE html><html><body>Error: please log in</body></html>",
            content_type="text/html",
        )
    stored.requests_seen += 1
    if f.content_coding:
        return await _serve_encoded(request, stored, f.content_coding)
    size = stored.size
    etag = etag_of(stored, sha256)
    start, end = 0, size  # [start, end)
    status = 200
    rng = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    validator_ok = (
        if_range is None or f.ignore_if_range or (not f.no_validator and if_range == etag)
    )
    if rng and not f.ignore_range and validator_ok:
        try:
            start, end = _parse_range(rng, size)
        except ValueError:
            return web.Response(status=400, text="bad range")
        if start >= size or start >= end:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    headers = {
        "Content-Length": str(end - start),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if not f.no_validator:
        headers["ETag"] = etag
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if stored.content_disposition:
        headers["Content-Disposition"] = stored.content_disposition
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    return await _stream(request, resp, stored, start, end)


async def _serve_encoded(
    request: web.Request, stored: StoredFile, coding: str
) -> web.StreamResponse:
    """The whole file compressed, ``Content-Encoding`` set, Range and Accept-Encoding ignored."""
    body = gzip.compress(stored.read(0, stored.size), mtime=0)
    headers = {
        "Content-Encoding": coding,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "Content-Length": str(len(body)),
    }
    rng = request.headers.get("Range")
    status = 200
    total = len(body)
    if rng:  # as some CDNs do: a range of the *encoded* bytes
        try:
            start, end = _parse_range(rng, total)
        except ValueError:
            start, end = 0, total
        if start < total:
            body = body[start : max(start + 1, end)]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{total}"
            headers["Content-Length"] = str(len(body))
            status = 206
    return web.Response(status=status, body=None if request.method == "HEAD" else body,
                        headers=headers)  # fmt: skip


async def _stream(
    request: web.Request, resp: web.StreamResponse, stored: StoredFile, start: int, end: int
) -> web.StreamResponse:
    f = stored.faults
    sent = 0
    limit = end - start
    if f.truncate is not None and f.truncate_times > 0:
        f.truncate_times -= 1
        limit = min(limit, f.truncate)
    reset_at = None
    if f.reset_after is not None and f.reset_times > 0:
        f.reset_times -= 1
        reset_at = f.reset_after
    stall_at = None
    if f.stall_after is not None and f.stall_times > 0:
        f.stall_times -= 1
        stall_at = f.stall_after
    chunk = 256 * 1024
    if f.rate:
        chunk = max(4096, min(chunk, f.rate // 20))
    t0 = time.monotonic()
    pos = start
    try:
        while sent < limit:
            n = min(chunk, limit - sent)
            if reset_at is not None and sent + n > reset_at:
                n = max(0, reset_at - sent)
            if stall_at is not None and sent >= stall_at:
                stall_at = None
                await asyncio.sleep(f.stall_seconds)
            data = stored.read(pos, pos + n) if n else b""
            if f.corrupt and data:
                data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
            if data:
                await resp.write(data)
            sent += n
            pos += n
            if reset_at is not None and sent >= reset_at:
                abort(request)
                return resp
            if f.rate:
                ahead = sent / f.rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except ConnectionResetError:
        # The client went away (a finished or cancelled range): normal for a CDN.
        return resp
    if limit < end - start:
        abort(request)
        return resp
    await resp.write_eof()
    return resp


def abort(request: web.Request) -> None:
    """Drop the TCP connection mid-body (a reset, as a flaky CDN does)."""
    transport = request.transport
    if transport is not None:
        with contextlib.suppress(Exception):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        transport.abort()
