"""File names from Content-Disposition (RFC 6266, incl. RFC 5987 ``filename*``) and URLs.

Servers choose these names: each one passes :func:`comfyfleet.names.plain_filename` here, once,
so a name with a control character, a bidi override or too many bytes is refused (the caller
falls back to the next source of a name), never written to disk or to a log.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

from comfyfleet.names import UnsafeName, plain_filename

_PARAM = re.compile(r"""\s*(?P<name>[^\s=;]+)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^;]*)\s*(?:;|$)""")


def _params(header: str) -> dict[str, str]:
    # Skip the disposition type ("attachment"/"inline"), then read name=value pairs.
    _, _, rest = header.partition(";")
    out: dict[str, str] = {}
    for m in _PARAM.finditer(rest):
        value = m["value"].strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\([\"\\])", r"\1", value[1:-1])
        out.setdefault(m["name"].lower(), value)
    return out


def _ext_value(value: str) -> str | None:
    """Decode an RFC 5987 ext-value: ``UTF-8'lang'percent%20encoded``."""
    charset, sep, rest = value.partition("'")
    if not sep:
        return None
    _, sep, encoded = rest.partition("'")
    if not sep:
        return None
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


def safe_name(name: str | None) -> str | None:
    """The last path component of ``name`` if it is a usable plain file name, else None."""
    if not name:
        return None
    name = re.split(r"[\\/]", name.strip())[-1].strip()
    try:
        return plain_filename(name)
    except UnsafeName:
        return None


def filename_from_content_disposition(header: str | None) -> str | None:
    """The file name a browser would save, from a Content-Disposition header.

    ``filename*`` (RFC 5987, percent-encoded UTF-8) wins over ``filename``; quoted strings,
    backslash escapes and a trailing ``;`` are accepted; any directory part is dropped.
    """
    if not header:
        return None
    params = _params(header)
    if "filename*" in params:
        name = safe_name(_ext_value(params["filename*"]))
        if name:
            return name
    return safe_name(params.get("filename"))


def filename_from_url(url: str) -> str | None:
    """The last path segment of ``url``, percent-decoded (None if empty or unsafe)."""
    return safe_name(unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]))


def filename_from_signed_url(url: str) -> str | None:
    """The name a presigned CDN URL will serve: ``response-content-disposition`` (S3/R2)
    or ``b2ContentDisposition`` (Backblaze B2) in its query."""
    query = parse_qs(urlsplit(url).query)
    for key in ("response-content-disposition", "b2ContentDisposition"):
        for value in query.get(key, []):
            name = filename_from_content_disposition(value)
            if name:
                return name
    return None
