"""The one reading of an HTTP error status, for probes and downloads alike.

:func:`classify` turns a non-success reply into the :class:`~comfyfleet.errors.SourceError`
it means, by service: Hugging Face by ``X-Error-Code`` and whether a token was sent
(huggingface_hub's ``hf_raise_for_status``, reference/downloaders.md §2.4), Civitai by its
JSON error, a presigned CDN (403/410: the signature expired), or a plain host. Whether an
error is worth retrying is the error's ``retryable``; :data:`RETRY_STATUSES` are those.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from comfyfleet.errors import (
    AccessDenied,
    GatedNoAccess,
    GatedRepo,
    NotFound,
    RateLimited,
    ServerError,
    SignatureExpired,
    SourceError,
    TokenRequired,
    Unreachable,
)
from comfyfleet.redact import redact_text, redact_url
from comfyfleet.retry import parse_retry_after
from comfyfleet.sources.endpoints import HF_PUBLIC, civitai_version_id, parse_hf_url

#: which server answered: a hub's own API, the CDN a hub redirected to, or a plain host
Service = Literal["huggingface", "civitai", "cdn", "http"]

#: Civitai's page for API keys
CIVITAI_TOKEN_PAGE = "https://civitai.com/user/account"


def retryable_status(status: int) -> bool:
    """Whether the same request may succeed later: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500


def _detail(body: bytes | str) -> str:
    """A one-line, redacted summary of an error body (JSON ``message``/``error`` first)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        text = str(doc.get("message") or doc.get("error") or "")
    return redact_text(" ".join(text.split())[:200])


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str,
    token_sent: bool,
    service: Service,
    *,
    url: str,
) -> SourceError:
    """The error a non-success ``status`` of ``url`` means (never raised here: callers raise)."""
    where = redact_url(url)
    if status == 429:
        return RateLimited(
            f"HTTP 429 from {where} (rate limited / download quota)",
            hint="wait and try again; lower download.per_host for this host "
            "(Civitai: the download quota)",
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if retryable_status(status):
        return ServerError(
            f"HTTP {status} from {where}",
            hint="the server is failing; try again later or add a mirror",
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if service == "huggingface":
        return _huggingface(status, headers, token_sent, url)
    if service == "civitai":
        return _civitai(status, body, token_sent, url)
    if service == "cdn" and status in (403, 410):
        return SignatureExpired(
            f"HTTP {status} from the CDN {where} (expired signature?)",
            hint="the original URL is resolved again for a fresh signed URL",
        )
    if status in (404, 410):
        return NotFound(f"HTTP {status} from {where}: no such file", hint="check the URL")
    if status in (401, 403):
        return AccessDenied(
            f"HTTP {status} from {where} (access denied)",
            hint="the host needs credentials comfyfleet does not have; use another URL or a mirror",
        )
    detail = _detail(body)
    return ServerError(f"HTTP {status} from {where}" + (f": {detail}" if detail else ""))


def _huggingface(
    status: int, headers: Mapping[str, str], token_sent: bool, url: str
) -> SourceError:
    loc = parse_hf_url(url)
    where = redact_url(url)
    repo = loc.repo if loc else where
    page = loc.page_url if loc else HF_PUBLIC
    code = headers.get("X-Error-Code", "")
    if code == "GatedRepo":
        if token_sent:
            return GatedNoAccess(
                f"{repo} is gated and the account of HF_TOKEN has no access to it",
                hint=f"accept the licence at {page} with the account that owns "
                "HF_TOKEN (or use a token of an account that has)",
            )
        return GatedRepo(
            f"{repo} is gated: a Hugging Face token is required",
            hint=f"set HF_TOKEN (token of an account that accepted the licence at {page})",
        )
    if code == "EntryNotFound" and loc:
        return NotFound(
            f"{loc.path} does not exist in {loc.repo} at revision {loc.rev}",
            hint="fix the path in the URL (see the suggestions)",
        )
    if code == "RevisionNotFound" and loc:
        return NotFound(
            f"revision {loc.rev!r} does not exist in {loc.repo}",
            hint="use a branch, tag or commit of the repo (e.g. main)",
        )
    if code in ("RepoNotFound", "EntryNotFound", "RevisionNotFound") or status in (404, 410):
        hint = "check the repo name" + ("" if token_sent else "; a private repo needs HF_TOKEN")
        return NotFound(f"repository {repo} not found ({where})", hint=hint)
    if status == 401:
        # The hub answers 401 for a missing repo too (so as not to reveal private ones).
        if token_sent:
            return AccessDenied(
                f"Hugging Face rejected HF_TOKEN for {repo}",
                hint="the token is invalid or expired: create a new one at "
                "https://huggingface.co/settings/tokens",
            )
        return NotFound(
            f"repository {repo} not found or private ({where})",
            hint="check the repo name; a private repo needs HF_TOKEN",
        )
    if status == 403:
        return AccessDenied(
            f"Hugging Face refused access to {repo} ({where})",
            hint="make sure HF_TOKEN has read permission for this repo",
        )
    return ServerError(f"HTTP {status} from {where}")


def _civitai(status: int, body: bytes | str, token_sent: bool, url: str) -> SourceError:
    vid = civitai_version_id(url)
    what = f"model version {vid}" if vid is not None else redact_url(url)
    detail = _detail(body)
    if status == 401:
        if "disabled" in detail.lower():
            return AccessDenied(f"Civitai: the creator has disabled downloads of {what}")
        if token_sent:
            return TokenRequired(
                f"Civitai rejected CIVITAI_TOKEN for {what}",
                hint=f"the token is invalid or expired: create an API key at {CIVITAI_TOKEN_PAGE}",
            )
        return TokenRequired(
            f"Civitai requires a logged-in download for {what}",
            hint=f"set CIVITAI_TOKEN to an API key from {CIVITAI_TOKEN_PAGE}",
        )
    if status == 403:
        return AccessDenied(
            f"Civitai refused {what}: {detail or 'forbidden'}",
            hint="early-access or restricted file: only an account with access can download it",
        )
    if status in (404, 410):
        gone = "archived" if status == 410 else "not found"
        return NotFound(
            f"Civitai {what} {gone}",
            hint="check the version id (the number after /api/download/models/)",
        )
    return ServerError(f"HTTP {status} from {redact_url(url)}" + (f": {detail}" if detail else ""))


def from_exception(
    exc: BaseException, url: str, *, connect_timeout: float, first_byte_timeout: float
) -> SourceError:
    """The error a failed exchange with ``url`` means (aiohttp's and timeouts; redacted)."""
    import aiohttp  # here, not at import time: classification itself needs no HTTP client

    where = redact_url(url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Unreachable(
            f"cannot reach {where}: no connection within {connect_timeout:g}s "
            "(download.connect_timeout)",
            hint="check the host name and your network; the server may be down",
        )
    if isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError, or our own deadline
        return Unreachable(
            f"{where} accepted the connection but sent no reply within "
            f"{first_byte_timeout:g}s (download.first_byte_timeout)",
            hint="the server is overloaded or hangs; try again later or add a mirror",
        )
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        reason = redact_text(str(exc)) or type(exc).__name__
        return Unreachable(
            f"cannot reach {where}: {reason}",
            hint="check the host name and your network; the server may be down",
        )
    reason = redact_text(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        # Asking again cannot help: a URL (or a redirect's target) we must not fetch.
        return SourceError(f"cannot fetch {where}: {reason}", hint="fix the URL")
    return ServerError(f"request to {where} failed: {reason}")
