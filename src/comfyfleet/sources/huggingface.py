"""Hugging Face: one HEAD on ``/resolve/`` (no redirect-follow), errors by ``X-Error-Code``.

Follows huggingface_hub's ``get_hf_file_metadata`` and ``hf_raise_for_status``
(reference/downloaders.md §2.2, §2.4): size from ``X-Linked-Size``, sha256 from
``X-Linked-Etag`` when it is 64 hex, the CDN URL from ``Location``; errors are read by
:func:`comfyfleet.sources.status.classify` (``X-Error-Code`` plus whether a token was sent).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp

from comfyfleet.errors import NotFound
from comfyfleet.redact import redact_url
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources.auth import auth_headers, headers_for_redirect
from comfyfleet.sources.base import USER_AGENT, RemoteFile
from comfyfleet.sources.endpoints import HFLocation, effective_url, origin, parse_hf_url
from comfyfleet.sources.filenames import filename_from_url, safe_name
from comfyfleet.sources.http import (
    Reply,
    raise_for_status,
    refuse_content_coding,
    send,
    strong_validator,
)

if TYPE_CHECKING:
    from comfyfleet.manifest import ModelEntry

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_RELATIVE_REDIRECTS = 5


def normalize_etag(value: str | None) -> str | None:
    """Strip ``W/`` and quotes from an ETag (huggingface_hub ``_normalize_etag``)."""
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


async def resolve_hf(
    session: aiohttp.ClientSession,
    entry: ModelEntry,
    url: str,
    *,
    policy: RetryPolicy,
    notes: list[str] | None = None,
) -> RemoteFile:
    """Resolve an HF ``/resolve/`` URL with one HEAD; the CDN ``Location`` becomes ``fetch_url``."""
    target = effective_url(url)
    loc = parse_hf_url(target)
    if loc is None:  # kind_of said HF, so this cannot happen; keep the error honest anyway
        raise NotFound(f"not a Hugging Face resolve URL: {redact_url(url)}")
    headers = {**auth_headers(target, notes), "Accept-Encoding": "identity"}
    token_sent = "Authorization" in headers
    current = target
    for _ in range(_MAX_RELATIVE_REDIRECTS + 1):
        reply = await send(session, "HEAD", current, headers, policy=policy)
        location = reply.location
        # Same-origin redirects are repo renames: follow them (huggingface_hub does too).
        if location and origin(location) == origin(current) and "/resolve/" in location:
            current = location
            continue
        break
    if reply.status >= 400:
        raise_for_status(reply, "huggingface", token_sent)
    etag = normalize_etag(reply.headers.get("X-Linked-Etag") or reply.headers.get("ETag"))
    linked_size = reply.headers.get("X-Linked-Size", "")
    size: int | None = int(linked_size) if linked_size.isdigit() else None
    validator = None
    if location:
        fetch_url = location
        fetch_headers = headers_for_redirect(location, current, {**auth_headers(current)})
    else:
        # Served directly (a small non-LFS file): Content-Length is the file's own length.
        refuse_content_coding(reply.headers, current)
        cl = reply.headers.get("Content-Length", "")
        size = size if size is not None else (int(cl) if cl.isdigit() else None)
        fetch_url, fetch_headers = current, auth_headers(current)
        validator = strong_validator(reply.headers)
    sha = entry.sha256 or (etag.lower() if etag and _SHA256.match(etag.lower()) else None)
    filename = entry.filename or safe_name(loc.path) or filename_from_url(target)
    if not filename:
        raise NotFound(f"cannot tell a file name for {redact_url(url)}")
    if "User-Agent" not in fetch_headers:
        fetch_headers["User-Agent"] = USER_AGENT
    return RemoteFile(
        url=url,
        kind="huggingface",
        filename=filename,
        size=size if size is not None else entry.size,
        sha256=sha,
        fetch_url=fetch_url,
        fetch_headers=fetch_headers,
        # X-Linked-Etag is the hub's, not the CDN's ETag: for a redirect, the download engine
        # takes the validator from the CDN's first reply (and sends it as If-Range on resume).
        etag=validator,
        accept_ranges=reply.headers.get("Accept-Ranges", "bytes") == "bytes",
    )


async def list_repo_files(
    session: aiohttp.ClientSession, loc: HFLocation, *, policy: RetryPolicy | None = None
) -> list[str]:
    """Every file path in the repo at ``loc.rev`` (tree API, recursive, following pages).

    Returns ``[]`` when the listing is refused (gated, missing repo or revision).
    """
    policy = policy or RetryPolicy.for_check()
    url: str | None = loc.tree_url()
    paths: list[str] = []
    for _ in range(50):  # pages of 1000 entries: plenty for any model repo
        if url is None:
            break
        reply = await send(session, "GET", url, auth_headers(url), policy=policy, read_body=True)
        if reply.status != 200:
            return paths
        try:
            entries = json.loads(reply.body)
        except ValueError:
            return paths
        paths += [e["path"] for e in entries if isinstance(e, dict) and e.get("type") == "file"]
        url = _next_link(reply, url)
    return paths


def _next_link(reply: Reply, url: str) -> str | None:
    """The ``rel="next"`` URL of a paginated tree listing."""
    for part in reply.headers.get("Link", "").split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if m:
            return urljoin(url, m.group(1))
    return None


def _squash(name: str) -> str:
    """A name without case and separators: ``wan_2.1_vae`` and ``wan2.1-vae`` compare equal."""
    return re.sub(r"[\s_.\-]+", "", name.lower())


def _score(wanted: str, candidate: str) -> float:
    w_dir, _, w_base = wanted.rpartition("/")
    c_dir, _, c_base = candidate.rpartition("/")
    w_stem, _, w_ext = w_base.rpartition(".") if "." in w_base else (w_base, "", "")
    c_stem, _, c_ext = c_base.rpartition(".") if "." in c_base else (c_base, "", "")
    # The typical mistake is a separator or a suffix, not a different model: a name equal but
    # for separators beats everything; then the similarity of the stems.
    score = 2.0 if _squash(w_stem) == _squash(c_stem) else 0.0
    score += difflib.SequenceMatcher(None, w_stem.lower(), c_stem.lower()).ratio()
    # Digits name versions (v1 vs v10, 2.1 vs 2.2): a candidate whose digits extend or equal
    # the wanted ones is likelier than one with different digits.
    w_digits, c_digits = re.findall(r"\d+", w_stem), re.findall(r"\d+", c_stem)
    if w_digits and w_digits != c_digits:
        aligned = all(c.startswith(w) for w, c in zip(w_digits, c_digits, strict=False))
        score -= 0.0 if aligned and len(w_digits) == len(c_digits) else 0.15
    score += 0.1 if w_ext.lower() == c_ext.lower() else 0.0
    score += 0.1 if w_dir == c_dir else 0.0
    return score


def closest_paths(wanted: str, existing: list[str], n: int = 5) -> list[str]:
    """Paths in ``existing`` most likely meant by ``wanted``, best first."""
    scored = sorted(((_score(wanted, p), p) for p in existing), key=lambda t: (-t[0], t[1]))
    return [p for s, p in scored[:n] if s >= 0.65]


def resolve_url_for(loc: HFLocation, path: str, like: str) -> str:
    """The ``/resolve/`` URL of ``path`` in the same repo and revision as the URL ``like``."""
    prefix = like[: like.index("/resolve/") + len("/resolve/")]
    return f"{prefix}{loc.rev}/{path}"
