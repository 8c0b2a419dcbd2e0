"""What the sources layer tells the rest of comfyfleet about one remote model file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["huggingface", "civitai", "http"]

#: User-Agent for every request: descriptive and without a browser token, so Civitai answers
#: auth failures with JSON instead of an HTML login redirect (reference/downloaders.md §3.4).
USER_AGENT = "comfyfleet/0.1 (+https://github.com/comfyfleet/comfyfleet)"


@dataclass
class RemoteFile:
    """A model file resolved for download: where to fetch its bytes and what they must be.

    ``fetch_url`` is the URL every ranged GET goes to (the CDN URL after the one redirect of
    HF/Civitai, else the original); ``fetch_headers`` are the headers for it — they carry
    ``Authorization`` only when ``fetch_url`` is on the host the token belongs to. When the
    CDN answers 403/410 (expired signature), resolve the original ``url`` again.
    """

    url: str
    kind: SourceKind
    filename: str
    size: int | None
    sha256: str | None
    fetch_url: str
    fetch_headers: dict[str, str] = field(default_factory=dict)
    #: a validator for If-Range (the ETag the data server sent), when known
    etag: str | None = None
    accept_ranges: bool = True
    #: the name Civitai's API gives when it differs from Content-Disposition's
    api_filename: str | None = None
