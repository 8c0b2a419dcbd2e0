"""The model server itself: one aiohttp app on two loopback ports, its lifecycle and request log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from comfyfleet.testing.background import LoopbackServer
from comfyfleet.testing.modelserver.cdn import CDN
from comfyfleet.testing.modelserver.civitai import CivitaiSite, CivitaiVersion
from comfyfleet.testing.modelserver.faults import Faults
from comfyfleet.testing.modelserver.files import RequestRecord, StoredFile
from comfyfleet.testing.modelserver.hf import HFHub, HFRepo
from comfyfleet.testing.modelserver.plain import PlainHost


class ModelServer(LoopbackServer, HFHub, CivitaiSite, CDN, PlainHost):
    """The fake hub/CDN/plain host on 127.0.0.1 (async context manager or background thread)."""

    thread_name = "model server"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, url_host: str | None = None
    ) -> None:
        self.host = host
        #: the host its URLs name (default: where it listens), e.g. an alias a client must not
        #: take for loopback although the traffic never leaves the machine
        self.url_host = url_host or host
        self.port = port
        #: a second port for the CDN, so a redirect to it changes origin as a real CDN's does
        self.cdn_port = 0
        self.requests: list[RequestRecord] = []
        #: delay before answering every request, in seconds (a distant server, for benchmarks)
        self.latency = 0.0
        self.cdn: dict[str, StoredFile] = {}
        self.plain: dict[str, StoredFile] = {}
        self.hf: dict[str, HFRepo] = {}
        self.civitai: dict[int, CivitaiVersion] = {}
        self._sha_cache: dict[tuple[int, int], str] = {}
        self._cdn_keys: dict[int, str] = {}

    # --- content -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the hub, the Civitai API and plain files."""
        if not self.port:
            raise RuntimeError("start the model server before adding files or asking its URL")
        return f"http://{self.url_host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        """``http://127.0.0.1:<cdn_port>``: where signed redirects point (another origin)."""
        return f"http://{self.url_host}:{self.cdn_port}"

    def endpoint_env(self) -> dict[str, str]:
        """Environment that points Hugging Face and Civitai URLs at this server."""
        return {"HF_ENDPOINT": self.base_url, "CIVITAI_ENDPOINT": self.base_url}

    def _stored(self, data: bytes | Path, faults: Faults) -> StoredFile:
        if isinstance(data, bytes | bytearray):
            return StoredFile(data=bytes(data), faults=faults)
        return StoredFile(path=Path(data), faults=faults)

    def _sha(self, stored: StoredFile) -> str:
        key = (id(stored), stored.version)
        if key not in self._sha_cache:
            self._sha_cache[key] = stored.sha256
        return self._sha_cache[key]

    def _cdn_key(self, stored: StoredFile, new: str | None = None) -> str:
        """The CDN path of ``stored`` (fixed when first published: bytes may change under it)."""
        if new is not None:
            self._cdn_keys[id(stored)] = new
        return self._cdn_keys[id(stored)]

    @staticmethod
    def _token(request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query.get("token")

    def requests_for(self, fragment: str, method: str | None = None) -> list[RequestRecord]:
        """Requests whose path contains ``fragment`` (and of ``method`` when given)."""
        return [
            r
            for r in self.requests
            if fragment in r.path and (method is None or r.method == method)
        ]

    # --- lifecycle ---------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_middleware])
        app.router.add_route("*", "/api/models/{repo:.+}/tree/{rev}", self._hf_tree)
        app.router.add_route("*", "/api/download/models/{vid}", self._civitai_download)
        app.router.add_route("GET", "/api/v1/model-versions/{vid}", self._civitai_version)
        app.router.add_route("*", "/cdn/{key:.+}", self._cdn)
        app.router.add_route("*", "/files/{path:.+}", self._plain)
        app.router.add_route("GET", "/login", self._login_page)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self._hf_resolve)
        return app

    async def start(self) -> None:
        """Start serving on the loopback interface."""
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        for attr in ("port", "cdn_port"):
            site = web.TCPSite(self._runner, self.host, getattr(self, attr), backlog=512)
            await site.start()
            setattr(self, attr, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    # --- request log ---------------------------------------------------------------------

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(
            RequestRecord(request.method, request.path, request.query_string, dict(request.headers))
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        return await handler(request)
