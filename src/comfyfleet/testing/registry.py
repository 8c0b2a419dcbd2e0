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

import subprocess
from pathlib import Path
from typing import Any

from aiohttp import web

from comfyfleet.testing.background import LoopbackServer


class RegistryServer(LoopbackServer):
    """The registry double on 127.0.0.1 (async context manager or background thread)."""

    thread_name = "registry double"

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
