"""Keep secrets out of everything we print, log or raise.

One rule for free text: every URL inside it (found by one regex, :data:`URL_IN_TEXT`) goes
through :func:`redact_url`, and every known secret value, bearer token and ``hf_`` token is
replaced. Exception messages from libraries (aiohttp embeds the request URL in many of them)
therefore lose a ``?token=``, a presigned ``X-Amz-Signature`` or a ``user:pass@`` wherever
they end up.
"""

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

#: query parameters that carry credentials (Civitai's ?token=, presigned S3/R2/B2/GCS/CloudFront)
_SECRET_PARAMS = re.compile(
    r"^(token|api_key|apikey|api-key|access_token|auth|key|sig|signature|x-amz-signature|"
    r"x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|"
    r"authorization|b2authorization|policy|key-pair-id|hf_token|password|secret)$",
    re.IGNORECASE,
)
#: a URL in free text: a scheme, ``://``, then anything up to white space or a quote
URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`\\]+")
#: punctuation that ends a sentence rather than the URL before it
_TRAILING = ".,;:!?)]}"
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
#: the fallback for a URL that does not even split: drop user info and the whole query
_USERINFO = re.compile(r"(://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """Return ``url`` with user info and credential-bearing query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if _SECRET_PARAMS.match(k) else v) for k, v in pairs], safe="*/:"
            )
        out = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        out = _USERINFO.sub(r"\1***@", url.split("?", 1)[0])
        if "?" in url:
            out += "?***"
    return _redact_values(out)


def secret_values() -> list[str]:
    """The secret values in the environment or given in memory (non-trivial ones only)."""
    from comfyfleet.credentials import given_values

    env = [os.environ.get(name, "") for name in SECRET_ENV_VARS]
    return [v for v in [*env, *given_values()] if len(v) >= 4]


def _url_match(m: re.Match[str]) -> str:
    text = m.group(0)
    core = text.rstrip(_TRAILING)
    return redact_url(core) + text[len(core) :]


def _redact_values(text: str, extra: list[str] | None = None) -> str:
    for value in [*secret_values(), *(extra or [])]:
        if value:
            text = text.replace(value, "***")
    text = _BEARER.sub(r"\1***", text)
    return _HF_TOKEN.sub("hf_***", text)


def redact_text(text: str, extra: list[str] | None = None) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`) and every known secret
    value, bearer token and ``hf_`` token replaced."""
    return _redact_values(URL_IN_TEXT.sub(_url_match, text), extra)
