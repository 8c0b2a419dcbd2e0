"""Hugging Face: one HEAD on ``/resolve/`` (no redirect-follow), errors by ``X-Error-Code``.

Follows huggingface_hub's ``get_hf_file_metadata`` and ``hf_raise_for_status``
(reference/downloaders.md §2.2, §2.4): size from ``X-Linked-Size``, sha256 from
``X-Linked-Etag`` when it is 64 hex, the CDN URL from ``Location``; gating is told apart by
``X-Error-Code: GatedRepo`` plus whether a token was sent — not by 401 vs 403.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp

from comfyfleet.errors import AccessDenied, GatedNoAccess, GatedRepo, NotFound, ServerError
from comfyfleet.redact import redact_url
from comfyfleet.sources.auth import auth_headers, headers_for_redirect
from comfyfleet.sources.base import USER_AGENT, RemoteFile
from comfyfleet.sources.endpoints import HFLocation, effective_url, origin, parse_hf_url
from comfyfleet.sources.filenames import filename_from_url, safe_name
from comfyfleet.sources.http import DEFAULT_ATTEMPTS, Reply, send

if TYPE_CHECKING:
    from comfyfleet.manifest import ModelEntry

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_RELATIVE_REDIRECTS = 5


def normalize_etag(value: str | None) -> str | None:
    """Strip ``W/`` and quotes from an ETag (huggingface_hub ``_normalize_etag``)."""
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


def _classify(reply: Reply, loc: HFLocation, url: str, token_sent: bool) -> None:
    """Raise the SourceError an HF error reply means (hf_raise_for_status, our flavour)."""
    code = reply.headers.get("X-Error-Code", "")
    safe = redact_url(url)
    if code == "GatedRepo":
        if token_sent:
            raise GatedNoAccess(
                f"{loc.repo} is gated and the account of HF_TOKEN has no access to it",
                hint=f"accept the licence at {loc.page_url} with the account that owns "
                "HF_TOKEN (or use a token of an account that has)",
            )
        raise GatedRepo(
            f"{loc.repo} is gated: a Hugging Face token is required",
            hint=f"set HF_TOKEN (token of an account that accepted the licence at {loc.page_url})",
        )
    if code == "EntryNotFound":
        raise NotFound(
            f"{loc.path} does not exist in {loc.repo} at revision {loc.rev}",
            hint="fix the path in the URL (see the suggestions)",
        )
    if code == "RevisionNotFound":
        raise NotFound(
            f"revision {loc.rev!r} does not exist in {loc.repo}",
            hint="use a branch, tag or commit of the repo (e.g. main)",
        )
    if code == "RepoNotFound" or (reply.status == 404 and not code):
        hint = "check the repo name" + ("" if token_sent else "; a private repo needs HF_TOKEN")
        raise NotFound(f"repository {loc.repo} not found ({safe})", hint=hint)
    if reply.status == 401:
        if token_sent:
            raise AccessDenied(
                f"Hugging Face rejected HF_TOKEN for {loc.repo}",
                hint="the token is invalid or expired: create a new one at "
                "https://huggingface.co/settings/tokens",
            )
        raise NotFound(
            f"repository {loc.repo} not found or private ({safe})",
            hint="check the repo name; a private repo needs HF_TOKEN",
        )
    if reply.status == 403:
        raise AccessDenied(
            f"Hugging Face refused access to {loc.repo} ({safe})",
            hint="make sure HF_TOKEN has read permission for this repo",
        )
    raise ServerError(f"{safe} answered {reply.status}")


async def resolve_hf(
    session: aiohttp.ClientSession,
    entry: ModelEntry,
    url: str,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
) -> RemoteFile:
    """Resolve an HF ``/resolve/`` URL with one HEAD; the CDN ``Location`` becomes ``fetch_url``."""
    target = effective_url(url)
    loc = parse_hf_url(target)
    if loc is None:  # kind_of said HF, so this cannot happen; keep the error honest anyway
        raise NotFound(f"not a Hugging Face resolve URL: {redact_url(url)}")
    headers = {**auth_headers(target), "Accept-Encoding": "identity"}
    token_sent = "Authorization" in headers
    current = target
    for _ in range(_MAX_RELATIVE_REDIRECTS + 1):
        reply = await send(session, "HEAD", current, headers, attempts=attempts)
        location = reply.location
        # Same-origin redirects are repo renames: follow them (huggingface_hub does too).
        if location and origin(location) == origin(current) and "/resolve/" in location:
            current = location
            continue
        break
    if reply.status >= 400:
        _classify(reply, loc, url, token_sent)
    etag = normalize_etag(reply.headers.get("X-Linked-Etag") or reply.headers.get("ETag"))
    linked_size = reply.headers.get("X-Linked-Size", "")
    size: int | None = int(linked_size) if linked_size.isdigit() else None
    if location:
        fetch_url = location
        fetch_headers = headers_for_redirect(location, current, {**auth_headers(current)})
    else:
        # Served directly (a small non-LFS file): Content-Length is the file's own length.
        cl = reply.headers.get("Content-Length", "")
        size = size if size is not None else (int(cl) if cl.isdigit() else None)
        fetch_url, fetch_headers = current, auth_headers(current)
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
        etag=None,  # X-Linked-Etag is not the CDN's ETag: the engine learns that from the CDN
        accept_ranges=reply.headers.get("Accept-Ranges", "bytes") == "bytes",
    )


async def list_repo_files(
    session: aiohttp.ClientSession, loc: HFLocation, *, attempts: int = DEFAULT_ATTEMPTS
) -> list[str]:
    """Every file path in the repo at ``loc.rev`` (tree API, recursive, following pages).

    Returns ``[]`` when the listing is refused (gated, missing repo or revision).
    """
    url: str | None = loc.tree_url()
    paths: list[str] = []
    for _ in range(50):  # pages of 1000 entries: plenty for any model repo
        if url is None:
            break
        reply = await send(
            session, "GET", url, auth_headers(url), attempts=attempts, read_body=True
        )
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
