"""Sources: what a model URL is, how to ask about it, and what may be sent to it.

Public API (the download engine and ``check`` use only these)::

    kind_of(url) -> SourceKind                     # "huggingface" | "civitai" | "http"
    await resolve(session, entry, url=None, policy=...) -> RemoteFile
    auth_headers(url) -> dict[str, str]            # User-Agent + Authorization for its host only
    classify(status, headers, body, token_sent, service, url=...) -> SourceError

Every failure is raised as a :class:`comfyfleet.errors.SourceError` subclass whose
``.status`` is the ``check`` status (classification happens in :mod:`.status`, once, for
probes and downloads alike).
"""

from __future__ import annotations

import aiohttp

from comfyfleet.manifest import ModelEntry
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources.auth import auth_headers, civitai_token, hf_token
from comfyfleet.sources.base import USER_AGENT, RemoteFile, SourceKind
from comfyfleet.sources.civitai import CivitaiFile, resolve_civitai
from comfyfleet.sources.endpoints import effective_url, kind_of, parse_hf_url
from comfyfleet.sources.filenames import (
    filename_from_content_disposition,
    filename_from_url,
)
from comfyfleet.sources.http import resolve_plain
from comfyfleet.sources.huggingface import closest_paths, list_repo_files, resolve_hf
from comfyfleet.sources.status import classify, from_exception


async def resolve(
    session: aiohttp.ClientSession,
    entry: ModelEntry,
    url: str | None = None,
    *,
    policy: RetryPolicy | None = None,
    notes: list[str] | None = None,
) -> RemoteFile:
    """Find out where ``entry``'s bytes are, their name, size and sha256 — downloading nothing.

    ``url`` defaults to ``entry.url`` (pass a mirror to resolve that instead). Hugging Face:
    one HEAD, no redirect-follow. Civitai: ``GET Range: bytes=0-0`` on the download URL and
    its CDN, plus the model-versions API. Plain: HEAD, else a 1-byte ranged GET.
    ``fetch_url``/``fetch_headers`` are what every ranged GET must use; Authorization is in
    ``fetch_headers`` only when ``fetch_url`` is on the token's own host. Server errors,
    connection failures and timeouts are retried under ``policy`` (default:
    :meth:`RetryPolicy.for_check`), at this one layer, then raised. ``notes`` collects what a
    person should know whatever the outcome (a token withheld from a plain-http host), once each.

    Raises the :class:`~comfyfleet.errors.SourceError` subclasses (``NotFound``,
    ``GatedRepo``, ``GatedNoAccess``, ``TokenRequired``, ``NotAModel``, ``AccessDenied``,
    ``RateLimited``, ``ServerError``, ``Unreachable``).
    """
    url = url or entry.url
    policy = policy or RetryPolicy.for_check()
    kind = kind_of(url)
    if kind == "huggingface":
        return await resolve_hf(session, entry, url, policy=policy, notes=notes)
    if kind == "civitai":
        return await resolve_civitai(session, entry, url, policy=policy, notes=notes)
    return await resolve_plain(session, entry, url, policy=policy, notes=notes)


__all__ = [
    "USER_AGENT",
    "CivitaiFile",
    "RemoteFile",
    "RetryPolicy",
    "SourceKind",
    "auth_headers",
    "civitai_token",
    "classify",
    "closest_paths",
    "effective_url",
    "filename_from_content_disposition",
    "filename_from_url",
    "from_exception",
    "hf_token",
    "kind_of",
    "list_repo_files",
    "parse_hf_url",
    "resolve",
]
