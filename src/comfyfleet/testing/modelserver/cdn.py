"""The fake CDN behind Hugging Face and Civitai: presigned URLs that refuse Authorization.

The CDN (``/cdn/...``, on its own port so a redirect to it changes origin) rejects any
``Authorization`` header with 400, as presigned R2/B2 URLs do (reference/downloaders.md §3.4),
answers 403 to an "expired signature" when told to, and serves byte ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from comfyfleet.testing.modelserver.faults import serve

if TYPE_CHECKING:
    from comfyfleet.testing.modelserver.files import StoredFile


class CDN:
    """The CDN's part of :class:`~comfyfleet.testing.modelserver.ModelServer` (a mixin)."""

    cdn: dict[str, StoredFile]

    if TYPE_CHECKING:  # provided by ModelServer

        def _sha(self, stored: StoredFile) -> str: ...

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        stored = self.cdn.get(request.match_info["key"])
        if stored is None:
            return web.Response(status=404, text="NoSuchKey")
        if "Authorization" in request.headers:
            return web.Response(
                status=400,
                text="<Error><Code>InvalidRequest</Code><Message>Missing x-amz-content-sha256"
                "</Message></Error>",
                content_type="application/xml",
            )
        if stored.faults.expired_times > 0:
            stored.faults.expired_times -= 1
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code>"
                                "<Message>Request has expired</Message></Error>",
                                content_type="application/xml")  # fmt: skip
        return await serve(request, stored, self._sha(stored))
