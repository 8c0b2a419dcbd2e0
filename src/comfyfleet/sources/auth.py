"""Tokens (environment, or given in memory: credentials.py), and the one rule for sending them.

A token goes only to the host it belongs to: ``HF_TOKEN`` to the hub, ``CIVITAI_TOKEN``
(or ``CIVITAI_API_TOKEN``) to Civitai — never to a CDN a redirect points at (presigned R2/B2
URLs answer 400/403 to any Authorization header; reference/downloaders.md §0.2), and never
over plain ``http://`` except to a loopback address: anyone on the path could read it. (A
plain-http URL on the public hubs is upgraded to https first, see
:func:`comfyfleet.sources.endpoints.effective_url`.) Tokens are sent as
``Authorization: Bearer`` so they never sit in a URL that could be logged.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from comfyfleet import credentials
from comfyfleet.sources.base import USER_AGENT
from comfyfleet.sources.endpoints import (
    civitai_endpoint,
    hf_endpoint,
    is_civitai_host,
    is_hf_host,
    kind_of,
    origin,
)


def hf_token() -> str | None:
    """``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``), when set."""
    return credentials.get("HF_TOKEN") or credentials.get("HUGGING_FACE_HUB_TOKEN")


def civitai_token() -> str | None:
    """``CIVITAI_TOKEN`` (or ``CIVITAI_API_TOKEN``), when set."""
    return credentials.get("CIVITAI_TOKEN") or credentials.get("CIVITAI_API_TOKEN")


def _token_owner(url: str) -> str | None:
    """Which service's token ``url`` may carry: ``"huggingface"``, ``"civitai"`` or None."""
    kind = kind_of(url)
    if kind in ("huggingface", "civitai"):
        return kind
    hf, civ = is_hf_host(url), is_civitai_host(url)
    if hf and civ:
        # Only when both endpoints share one origin (a local test hub): decide by API path.
        path = urlsplit(url).path
        return "civitai" if path.startswith(("/api/v1/", "/api/download/")) else "huggingface"
    return "huggingface" if hf else "civitai" if civ else None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the box."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_carry_token(url: str) -> bool:
    """Whether a request to ``url`` may carry a token: https, or plain http to loopback."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme == "https" or (scheme == "http" and is_loopback(parts.hostname or ""))


def auth_headers(url: str, warnings: list[str] | None = None) -> dict[str, str]:
    """Headers for a request to ``url``: our User-Agent, plus ``Authorization`` only when
    ``url`` is on the host the token belongs to and the channel is safe for it.

    A token withheld because ``url`` is plain http adds one line naming the host to
    ``warnings`` (when given).
    """
    headers = {"User-Agent": USER_AGENT}
    owner = _token_owner(url)
    token = hf_token() if owner == "huggingface" else civitai_token() if owner else None
    if not token:
        return headers
    if may_carry_token(url):
        headers["Authorization"] = f"Bearer {token}"
    elif warnings is not None:
        var = "HF_TOKEN" if owner == "huggingface" else "CIVITAI_TOKEN"
        host = urlsplit(url).hostname or "?"
        note = (
            f"{var} not sent to {host}: the URL is plain http:// (a token goes only over "
            "https, or to a loopback address); gated or private files there will fail"
        )
        if note not in warnings:
            warnings.append(note)
    return headers


def headers_for_redirect(target: str, source: str, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` for a redirect ``target``: Authorization dropped when the origin changes
    (or the target may not carry a token at all)."""
    if origin(target) == origin(source) and may_carry_token(target):
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


__all__ = [
    "auth_headers",
    "civitai_endpoint",
    "civitai_token",
    "headers_for_redirect",
    "hf_endpoint",
    "hf_token",
    "is_loopback",
    "may_carry_token",
]
