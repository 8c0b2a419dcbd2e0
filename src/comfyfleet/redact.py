"""Keep secrets out of everything we print, log or raise."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: environment variables whose values are secrets wherever they appear
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "CIVITAI_TOKEN",
    "CIVITAI_API_TOKEN",
    "VAST_API_KEY",
    "COMFYFLEET_API_TOKEN",
)

#: query parameters that carry credentials (Civitai's ?token=, presigned S3/R2/B2 signatures)
_SECRET_PARAMS = re.compile(
    r"^(token|api_key|apikey|access_token|key|sig|signature|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|authorization|b2authorization)$",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def redact_url(url: str) -> str:
    """Return ``url`` with user info and credential-bearing query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAMS.match(k) else v) for k, v in pairs], safe="*/:"
        )
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def secret_values() -> list[str]:
    """The secret values in the environment or given in memory (non-trivial ones only)."""
    from comfyfleet.credentials import given_values

    env = [os.environ.get(name, "") for name in SECRET_ENV_VARS]
    return [v for v in [*env, *given_values()] if len(v) >= 4]


def redact_text(text: str, extra: list[str] | None = None) -> str:
    """Replace every known secret value, bearer token and ``hf_`` token in ``text``."""
    for value in [*secret_values(), *(extra or [])]:
        if value:
            text = text.replace(value, "***")
    text = _BEARER.sub(r"\1***", text)
    return _HF_TOKEN.sub("hf_***", text)
