"""Civitai: the model-versions API for sha256, a ``GET Range: bytes=0-0`` probe of the download
URL (HEAD answers 401 even with a valid token) and one probe of the CDN it redirects to.

reference/downloaders.md §3: the download endpoint 307-redirects to a presigned R2/B2 URL that
rejects any Authorization header; without a token a login-required file answers 401 JSON —
or, to a browser-like User-Agent, a redirect to an HTML login page (we never look like one).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from comfyfleet.errors import NotAModel, NotFound, SourceError, TokenRequired
from comfyfleet.redact import redact_url
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources.auth import auth_headers, headers_for_redirect
from comfyfleet.sources.base import RemoteFile
from comfyfleet.sources.endpoints import (
    civitai_file_id,
    civitai_version_id,
    effective_url,
    origin,
)
from comfyfleet.sources.filenames import (
    filename_from_content_disposition,
    filename_from_signed_url,
    filename_from_url,
    safe_name,
)
from comfyfleet.sources.http import (
    RANGE_PROBE,
    raise_for_status,
    refuse_content_coding,
    send,
    strong_validator,
    without_probe_headers,
)
from comfyfleet.sources.status import CIVITAI_TOKEN_PAGE

if TYPE_CHECKING:
    from comfyfleet.manifest import ModelEntry

TOKEN_PAGE = CIVITAI_TOKEN_PAGE


@dataclass
class CivitaiFile(RemoteFile):
    """A resolved Civitai file, with what the API says besides the bytes' own headers."""

    #: the Content-Disposition name the CDN serves (what a browser saves)
    served_filename: str | None = None
    #: ``sizeKB × 1024`` from the API: approximate, never used to verify bytes
    approx_size: int | None = None
    version_id: int | None = None


@dataclass
class VersionInfo:
    """The file of a model version as ``/api/v1/model-versions/<id>`` describes it."""

    name: str | None
    sha256: str | None
    approx_size: int | None


def _is_login_page(location: str) -> bool:
    return "/login" in location.split("?", 1)[0]


def _pick_file(doc: dict[str, Any], file_id: int | None) -> dict[str, Any] | None:
    files = [f for f in doc.get("files") or [] if isinstance(f, dict)]
    if file_id is not None:
        return next((f for f in files if f.get("id") == file_id), None)
    return next((f for f in files if f.get("primary")), files[0] if files else None)


async def version_info(
    session: aiohttp.ClientSession, api_url: str, file_id: int | None, policy: RetryPolicy
) -> VersionInfo | None:
    """The API's view of the file, or None when the API has nothing to say (or fails: it is
    advisory — the download's own probe decides whether the file can be fetched)."""
    try:
        reply = await send(
            session, "GET", api_url, auth_headers(api_url), policy=policy, read_body=True
        )
    except SourceError:
        return None
    if reply.status != 200:
        return None
    try:
        doc = json.loads(reply.body)
    except ValueError:
        return None
    f = _pick_file(doc, file_id) if isinstance(doc, dict) else None
    if f is None:
        return None
    hashes = f.get("hashes") or {}
    sha = hashes.get("SHA256") if isinstance(hashes, dict) else None
    size_kb = f.get("sizeKB")
    return VersionInfo(
        name=safe_name(f.get("name")) if isinstance(f.get("name"), str) else None,
        sha256=sha.lower() if isinstance(sha, str) and len(sha) == 64 else None,
        approx_size=int(size_kb * 1024) if isinstance(size_kb, int | float) else None,
    )


async def resolve_civitai(
    session: aiohttp.ClientSession,
    entry: ModelEntry,
    url: str,
    *,
    policy: RetryPolicy,
    notes: list[str] | None = None,
) -> CivitaiFile:
    """Resolve a Civitai download URL: probe it with a 1-byte ranged GET (redirect not
    followed), then the CDN it points at (without Authorization), then ask the API for sha256."""
    target = effective_url(url)
    vid = civitai_version_id(target)
    if vid is None:
        raise NotFound(f"not a Civitai download URL: {redact_url(url)}")
    api_base = target[: target.index("/api/download/")]
    api_url = f"{api_base}/api/v1/model-versions/{vid}"
    # The API answer is independent of the probes: ask in parallel (one round trip less);
    # the task group cancels it when the probes fail.
    try:
        async with asyncio.TaskGroup() as tg:
            api = tg.create_task(version_info(session, api_url, civitai_file_id(target), policy))
            probe = tg.create_task(_probe_download(session, entry, url, target, vid, policy, notes))
    except BaseExceptionGroup as group:
        raise _leaf(group) from None
    remote, info = probe.result(), api.result()
    api_name = info.name if info else None
    if not entry.filename and not remote.served_filename and api_name:
        remote.filename = api_name
    remote.sha256 = entry.sha256 or (info.sha256 if info else None)
    remote.approx_size = info.approx_size if info else None
    served = remote.served_filename or remote.filename
    remote.api_filename = api_name if api_name and api_name != served else None
    return remote


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The first real error inside a task group's failure (the probe's, as a plain exception)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _leaf(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def _probe_download(
    session: aiohttp.ClientSession,
    entry: ModelEntry,
    url: str,
    target: str,
    vid: int,
    policy: RetryPolicy,
    notes: list[str] | None,
) -> CivitaiFile:
    """The download URL's redirect and the CDN's answer to a 1-byte probe."""
    headers = {
        **auth_headers(target, notes),
        "Range": RANGE_PROBE,
        "Accept-Encoding": "identity",
    }
    token_sent = "Authorization" in headers
    current = target
    for _ in range(4):
        reply = await send(session, "GET", current, headers, policy=policy)
        location = reply.location
        if location and _is_login_page(location):
            raise TokenRequired(
                f"Civitai redirected the download of model version {vid} to its login page",
                hint=f"set CIVITAI_TOKEN to an API key from {TOKEN_PAGE}",
            )
        if location and origin(location) == origin(current):
            current = location
            continue
        break
    if reply.status >= 400:
        raise_for_status(reply, "civitai", token_sent)

    served_name = None
    if location:
        # The presigned CDN URL: never send it our Authorization (R2/B2 answer 400/403).
        fetch_url = location
        fetch_headers = headers_for_redirect(location, current, without_probe_headers(headers))
        fetch_headers.pop("Authorization", None)
        served_name = filename_from_signed_url(location)
        cdn = await send(
            session,
            "GET",
            fetch_url,
            {**fetch_headers, "Range": RANGE_PROBE, "Accept-Encoding": "identity"},
            policy=policy,
        )
        if cdn.status >= 400:
            raise_for_status(cdn, "http", False)
        data = cdn
    else:
        fetch_url = current
        fetch_headers = without_probe_headers(headers)
        data = reply
    refuse_content_coding(data.headers, data.url)
    if data.status not in (200, 206) or data.looks_like_page():
        raise NotAModel(
            f"Civitai answered model version {vid} with a {data.content_type or 'page'}, "
            "not a model file",
            hint=f"the file may need a login: set CIVITAI_TOKEN ({TOKEN_PAGE})",
        )
    served_name = (
        filename_from_content_disposition(data.headers.get("Content-Disposition")) or served_name
    )
    size = data.file_size

    # The URL's last segment is the version id, a poor name: the API's name is tried first.
    filename = entry.filename or served_name or filename_from_url(target)
    if not filename:
        raise NotFound(f"cannot tell a file name for {redact_url(url)}")
    return CivitaiFile(
        url=url,
        kind="civitai",
        filename=filename,
        size=size if size is not None else entry.size,
        sha256=entry.sha256,
        fetch_url=fetch_url,
        fetch_headers=fetch_headers,
        etag=strong_validator(data.headers),
        accept_ranges=data.status == 206,
        served_filename=served_name,
        version_id=vid,
    )
