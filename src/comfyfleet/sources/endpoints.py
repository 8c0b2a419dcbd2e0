"""What a URL is: Hugging Face, Civitai or a plain host (honouring the endpoint variables).

Following huggingface_hub, ``HF_ENDPOINT`` redirects every ``https://huggingface.co/...`` URL to
that endpoint, and URLs already on the endpoint count as Hugging Face; ``CIVITAI_ENDPOINT``
does the same for ``https://civitai.com`` (DESIGN.md "Endpoints").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from comfyfleet.sources.base import SourceKind

HF_PUBLIC = "https://huggingface.co"
HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
CIVITAI_PUBLIC = "https://civitai.com"
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.red"})

# /{org}/{name}/resolve/{rev}/{path}, optionally under datasets/ or spaces/
_HF_RESOLVE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
_CIVITAI_DOWNLOAD = re.compile(r"^/api/download/models/(?P<vid>\d+)/?$")


def hf_endpoint() -> str:
    """The Hugging Face endpoint (``$HF_ENDPOINT`` or ``https://huggingface.co``), no trailing /."""
    return (os.environ.get("HF_ENDPOINT") or HF_PUBLIC).rstrip("/")


def civitai_endpoint() -> str:
    """The Civitai endpoint (``$CIVITAI_ENDPOINT`` or ``https://civitai.com``), no trailing /."""
    return (os.environ.get("CIVITAI_ENDPOINT") or CIVITAI_PUBLIC).rstrip("/")


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` with default ports filled in: two URLs share an origin iff equal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _on(url: str, endpoint: str, public_hosts: frozenset[str]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return origin(url) == origin(endpoint) or host in public_hosts


def is_hf_host(url: str) -> bool:
    """Whether ``url`` is on Hugging Face's hub (public host or ``$HF_ENDPOINT``)."""
    return _on(url, hf_endpoint(), HF_HOSTS)


def is_civitai_host(url: str) -> bool:
    """Whether ``url`` is on Civitai (public host or ``$CIVITAI_ENDPOINT``)."""
    return _on(url, civitai_endpoint(), CIVITAI_HOSTS)


def _rebase(url: str, endpoint: str, public_hosts: frozenset[str]) -> str:
    parts = urlsplit(url)
    if (parts.hostname or "").lower() not in public_hosts:
        return url
    base = urlsplit(endpoint)
    path = base.path.rstrip("/") + parts.path
    return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))


def upgrade_hub_scheme(url: str) -> str:
    """``http://huggingface.co/…`` (or civitai.com) as ``https://``: the hubs serve https only
    in practice, and a plain-http request would carry the token in cleartext."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() != "http" or host not in HF_HOSTS | CIVITAI_HOSTS:
        return url
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, 80) else f"{host}:{port}"
    return urlunsplit(("https", netloc, parts.path, parts.query, parts.fragment))


def effective_url(url: str) -> str:
    """The URL fetched: public HF/Civitai URLs moved onto ``$HF_ENDPOINT``/``$CIVITAI_ENDPOINT``
    (plain ``http://`` on those hubs upgraded to https)."""
    url = upgrade_hub_scheme(url)
    kind = kind_of(url)
    if kind == "huggingface" and os.environ.get("HF_ENDPOINT"):
        return _rebase(url, hf_endpoint(), HF_HOSTS)
    if kind == "civitai" and os.environ.get("CIVITAI_ENDPOINT"):
        return _rebase(url, civitai_endpoint(), CIVITAI_HOSTS)
    return url


def _endpoint_path(url: str, endpoint: str) -> str:
    """The path of ``url`` relative to an endpoint that may itself carry a path prefix."""
    path = urlsplit(url).path
    prefix = urlsplit(endpoint).path.rstrip("/")
    if prefix and origin(url) == origin(endpoint) and path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return path


def kind_of(url: str) -> SourceKind:
    """``"huggingface"`` for a ``/resolve/`` URL on the hub, ``"civitai"`` for a Civitai
    download URL, else ``"http"`` (honours ``HF_ENDPOINT`` and ``CIVITAI_ENDPOINT``)."""
    if is_civitai_host(url) and _CIVITAI_DOWNLOAD.match(_endpoint_path(url, civitai_endpoint())):
        return "civitai"
    if is_hf_host(url) and _HF_RESOLVE.match(_endpoint_path(url, hf_endpoint())):
        return "huggingface"
    return "http"


@dataclass(frozen=True)
class HFLocation:
    """The parts of a Hugging Face ``/resolve/`` URL."""

    repo: str
    rev: str
    path: str
    repo_type: str = "model"  # "model", "dataset" or "space"

    @property
    def page_url(self) -> str:
        """The repo's page on the public hub (where a gated licence is accepted)."""
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(self.repo_type, "")
        return f"{HF_PUBLIC}/{prefix}{self.repo}"

    def tree_url(self) -> str:
        """The tree API listing of the repo at ``rev`` (recursive) on the current endpoint."""
        kind = {"dataset": "datasets", "space": "spaces"}.get(self.repo_type, "models")
        return f"{hf_endpoint()}/api/{kind}/{self.repo}/tree/{self.rev}?recursive=true"


def parse_hf_url(url: str) -> HFLocation | None:
    """Repo, revision and file path of an HF ``/resolve/`` URL (or None if it is not one)."""
    m = _HF_RESOLVE.match(_endpoint_path(url, hf_endpoint()))
    if not m:
        return None
    repo_type = {"datasets": "dataset", "spaces": "space"}.get(m["type"] or "", "model")
    return HFLocation(unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]), repo_type)


def civitai_version_id(url: str) -> int | None:
    """The model-version id of a Civitai download URL."""
    m = _CIVITAI_DOWNLOAD.match(_endpoint_path(url, civitai_endpoint()))
    return int(m["vid"]) if m else None


def civitai_file_id(url: str) -> int | None:
    """The ``fileId`` query parameter of a Civitai download URL, when given."""
    values = parse_qs(urlsplit(url).query).get("fileId")
    return int(values[0]) if values and values[0].isdigit() else None
