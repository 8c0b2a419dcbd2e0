"""Plain files (``/files/...``) on an ordinary web host, with per-file fault injection."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from comfyfleet.testing.modelserver.faults import Faults, serve

if TYPE_CHECKING:
    from comfyfleet.testing.modelserver.files import StoredFile


class PlainHost:
    """The plain host's part of :class:`~comfyfleet.testing.modelserver.ModelServer` (a mixin)."""

    plain: dict[str, StoredFile]
    base_url: str

    if TYPE_CHECKING:  # provided by ModelServer

        def _stored(self, data: bytes | Path, faults: Faults) -> StoredFile: ...
        def _sha(self, stored: StoredFile) -> str: ...

    def add_file(
        self, path: str, data: bytes | Path, faults: Faults | None = None, **fault_kw: Any
    ) -> str:
        """Serve ``data`` at ``/files/<path>``; return its URL."""
        path = path.lstrip("/")
        self.plain[path] = self._stored(data, faults or Faults(**fault_kw))
        return f"{self.base_url}/files/{path}"

    def replace_file(self, path: str, data: bytes) -> None:
        """Serve other bytes at ``/files/<path>`` (updated upstream, same URL)."""
        self.plain[path.lstrip("/")].replace(data)

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        stored = self.plain.get(request.match_info["path"])
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return await serve(request, stored, self._sha(stored))
