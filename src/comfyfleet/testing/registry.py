"""A local Comfy Registry (``api.comfy.org``) for tests and the demo: node records by id.

It follows the documented API (docs.comfy.org, "Retrieve a specific node by ID"):
``GET /nodes/{nodeId}`` answers 200 with a node record (``id``, ``name``, ``repository``,
``latest_version: {version, ...}``, ...) or 404 for an unknown id. ``fail_with`` makes every
answer a given status (a registry having a bad day). Point comfyfleet at it with
:meth:`RegistryServer.endpoint_env` (``COMFY_REGISTRY_ENDPOINT``).

It also stands in for the code host the records point at (GitHub): :meth:`host_repo` serves
a bare repository over git's "dumb" HTTP protocol, so a registry id resolves to an
``http://`` repository that ``git clone`` really fetches.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path
from typing import Any

from aiohttp import web


class RegistryServer:
    """The registry double on 127.0.0.1 (async context manager or background thread)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.nodes: dict[str, dict[str, Any]] = {}
        #: paths of every request, in order
        self.requests: list[str] = []
        #: when set, every request answers this status
        self.fail_with: int | None = None
        self.repos: dict[str, Path] = {}
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def endpoint_env(self) -> dict[str, str]:
        """Environment that points comfyfleet's registry client at this server."""
        return {"COMFY_REGISTRY_ENDPOINT": self.base_url}

    def add_node(
        self, node_id: str, repository: str | None, version: str = "1.0.0", **extra: Any
    ) -> None:
        """Publish a node pack (``repository=None``: a record without one)."""
        record: dict[str, Any] = {
            "id": node_id,
            "name": node_id,
            "description": "",
            "latest_version": {"version": version, "node_id": node_id, "status": "active"},
            **extra,
        }
        if repository is not None:
            record["repository"] = repository
        self.nodes[node_id] = record

    def host_repo(self, name: str, bare: Path) -> str:
        """Serve the bare repository ``bare`` at ``/git/<name>.git``; return its URL."""
        subprocess.run(["git", "update-server-info"], cwd=bare, check=True, capture_output=True)
        self.repos[name] = Path(bare)
        return f"{self.base_url}/git/{name}.git"

    async def _git(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        bare = self.repos.get(request.match_info["name"])
        rel = request.match_info["path"]
        if bare is None or ".." in rel.split("/"):
            raise web.HTTPNotFound()
        path = bare / rel
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _node(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.fail_with is not None:
            return web.json_response({"message": "unavailable"}, status=self.fail_with)
        record = self.nodes.get(request.match_info["node_id"])
        if record is None:
            return web.json_response({"message": "Node not found"}, status=404)
        return web.json_response(record)

    async def start(self) -> None:
        """Start serving on the loopback interface (a free port)."""
        app = web.Application()
        app.router.add_get("/nodes/{node_id}", self._node)
        app.router.add_get("/git/{name}.git/{path:.+}", self._git)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RegistryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Serve from a background thread (for synchronous callers such as CLI tests)."""
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()

            async def main() -> None:
                await self.start()
                ready.set()
                await self._stop.wait()  # type: ignore[union-attr]
                await self.stop()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=serve, name="registry", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("registry double did not start within 15 s")

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread` (a second call does nothing)."""
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(15)
            self._thread = None
        self._loop = self._stop = None
