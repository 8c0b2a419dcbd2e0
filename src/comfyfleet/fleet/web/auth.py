"""Dashboard auth: the operator token in an HttpOnly cookie, and a CSRF token derived from it.

The login form posts the token once; it is kept in ``comfyfleet_token`` (HttpOnly,
SameSite=Strict, never in a URL). Requests that change state must also carry
``X-CSRF-Token`` — an HMAC of the token that the page holds in a ``<meta>`` tag — so a
cross-site form or script cannot act with the operator's cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "comfyfleet_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(token: str) -> str:
    """The CSRF token that goes with one operator token (stable, not the token itself)."""
    return hmac.new(token.encode(), b"comfyfleet-dashboard-csrf", hashlib.sha256).hexdigest()


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the operator token."""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def cookie_operator(request: Request, token: str) -> bool:
    """True when the request is the operator's by its cookie (and, unless it is a safe
    method, by the CSRF header too). For the API's ``require_operator`` besides Bearer."""
    if not token_matches(request.cookies.get(COOKIE), token):
        return False
    if request.method in SAFE_METHODS:
        return True
    sent = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(sent.encode(), csrf_token(token).encode())


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from another site (login CSRF)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host
