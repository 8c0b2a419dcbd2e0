"""The fake Civitai: download redirects to a presigned CDN URL, the model-versions API.

``GET /api/download/models/{id}``: 307 to a presigned CDN path; 401 JSON without a token on
a login-required file, or an HTML login redirect for a browser-like User-Agent; HEAD always
answers 401. ``GET /api/v1/model-versions/{id}`` with uppercase ``SHA256``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from comfyfleet.testing.modelserver.faults import Faults

if TYPE_CHECKING:
    from comfyfleet.testing.modelserver.files import StoredFile

BROWSER_TOKENS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")


@dataclass
class CivitaiVersion:
    """A Civitai model version with its primary file."""

    key: str
    filename: str
    api_name: str
    token_required: bool
    valid_tokens: set[str]


class CivitaiSite:
    """Civitai's part of :class:`~comfyfleet.testing.modelserver.ModelServer` (a mixin)."""

    civitai: dict[int, CivitaiVersion]
    cdn: dict[str, StoredFile]
    #: the model-versions API: seconds before it answers, and a status it answers instead
    civitai_api_latency: float = 0.0
    civitai_api_status: int | None = None
    base_url: str
    cdn_url: str

    if TYPE_CHECKING:  # provided by ModelServer

        def _stored(self, data: bytes | Path, faults: Faults) -> StoredFile: ...
        def _sha(self, stored: StoredFile) -> str: ...
        def _cdn_key(self, stored: StoredFile, new: str | None = None) -> str: ...
        @staticmethod
        def _token(request: web.Request) -> str | None: ...

    def add_civitai(
        self,
        version_id: int,
        data: bytes | Path,
        filename: str,
        *,
        api_name: str | None = None,
        token_required: bool = False,
        valid_tokens: tuple[str, ...] = (),
        faults: Faults | None = None,
    ) -> str:
        """Publish a Civitai model version; return its ``/api/download/models/<id>`` URL."""
        stored = self._stored(data, faults or Faults())
        stored.content_disposition = f'attachment; filename="{filename}"'
        key = self._cdn_key(stored, f"civitai/{version_id}/{self._sha(stored)}")
        self.cdn[key] = stored
        self.civitai[version_id] = CivitaiVersion(
            key, filename, api_name or filename, token_required, set(valid_tokens)
        )
        return f"{self.base_url}/api/download/models/{version_id}"

    async def _civitai_download(self, request: web.Request) -> web.StreamResponse:
        version = self.civitai.get(
            int(request.match_info["vid"]) if request.match_info["vid"].isdigit() else -1
        )
        token = self._token(request)
        browser = any(t in request.headers.get("User-Agent", "").lower() for t in BROWSER_TOKENS)
        if request.method == "HEAD":
            # Observed in the field: HEAD answers 401 even with a valid token.
            return web.Response(status=401)
        if version is None:
            return web.json_response({"error": "File not found"}, status=404)
        authorised = token is not None and (
            not version.valid_tokens or token in version.valid_tokens
        )
        if version.token_required and not authorised:
            if browser:
                raise web.HTTPFound(
                    f"/login?returnUrl=/api/download/models/{request.match_info['vid']}&reason=download-auth"
                )
            return web.json_response(
                {
                    "error": "Unauthorized",
                    "message": "The creator of this asset requires you to be logged in "
                    "to download it",
                },
                status=401,
            )
        disposition = quote(f'attachment; filename="{version.filename}"')
        location = (
            f"{self.cdn_url}/cdn/{version.key}?X-Amz-Expires=86400&X-Amz-Signature=sig"
            f"&response-content-disposition={disposition}"
        )
        return web.Response(
            status=307, headers={"Location": location, "Cache-Control": "no-store, max-age=0"}
        )

    async def _civitai_version(self, request: web.Request) -> web.Response:
        if self.civitai_api_latency:
            await asyncio.sleep(self.civitai_api_latency)
        if self.civitai_api_status is not None:
            return web.json_response({"error": "API failure"}, status=self.civitai_api_status)
        vid = int(request.match_info["vid"]) if request.match_info["vid"].isdigit() else -1
        version = self.civitai.get(vid)
        if version is None:
            return web.json_response({"error": f"No version with id {vid}"}, status=404)
        stored = self.cdn[version.key]
        return web.json_response(
            {
                "id": vid,
                "name": f"v{vid}",
                "files": [
                    {
                        "id": vid * 10,
                        "name": version.api_name,
                        "type": "Model",
                        "sizeKB": stored.size / 1024,
                        "metadata": {"format": "SafeTensor", "fp": "fp16"},
                        "hashes": {"SHA256": self._sha(stored).upper(), "AutoV2": "ABCDEF0123"},
                        "downloadUrl": f"{self.base_url}/api/download/models/{vid}",
                        "primary": True,
                    }
                ],
            }
        )

    async def _login_page(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<!DOCTYPE html><html><head><title>Sign in | Civitai</title></head>"
            "<body>Please sign in</body></html>",
            content_type="text/html",
        )
