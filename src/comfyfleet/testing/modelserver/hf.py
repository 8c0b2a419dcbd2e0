"""The fake Hugging Face hub: ``/resolve/`` redirects to the CDN, the tree API, gating.

``HEAD/GET /{org}/{repo}/resolve/{rev}/{path}``: 302 to a CDN path with ``X-Linked-Size``,
``X-Linked-Etag`` (the sha256), ``X-Repo-Commit``; errors carry ``X-Error-Code``
(``GatedRepo`` 401 without a token / 403 with a token lacking a grant, ``EntryNotFound``,
``RevisionNotFound``, ``RepoNotFound``). ``GET /api/models/{org}/{repo}/tree/{rev}``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from comfyfleet.testing.modelserver.faults import Faults

if TYPE_CHECKING:
    from comfyfleet.testing.modelserver.files import StoredFile

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HFRepo:
    """A Hugging Face model repository on the fake hub."""

    files: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # rev -> path -> file
    gated: bool = False
    granted_tokens: set[str] = field(default_factory=set)


class HFHub:
    """The hub's part of :class:`~comfyfleet.testing.modelserver.ModelServer` (a mixin)."""

    hf: dict[str, HFRepo]
    cdn: dict[str, StoredFile]
    base_url: str
    cdn_url: str

    if TYPE_CHECKING:  # provided by ModelServer

        def _stored(self, data: bytes | Path, faults: Faults) -> StoredFile: ...
        def _sha(self, stored: StoredFile) -> str: ...
        def _cdn_key(self, stored: StoredFile, new: str | None = None) -> str: ...
        @staticmethod
        def _token(request: web.Request) -> str | None: ...

    def add_hf_file(
        self,
        repo: str,
        path: str,
        data: bytes | Path,
        rev: str = "main",
        gated: bool = False,
        granted_tokens: tuple[str, ...] = (),
        faults: Faults | None = None,
    ) -> str:
        """Put a file in an HF repo (created on first use); return its ``/resolve/`` URL."""
        hf_repo = self.hf.setdefault(repo, HFRepo())
        hf_repo.gated = hf_repo.gated or gated
        hf_repo.granted_tokens.update(granted_tokens)
        stored = self._stored(data, faults or Faults())
        hf_repo.files.setdefault(rev, {})[path] = stored
        self.cdn[self._cdn_key(stored, f"hf/{self._sha(stored)}")] = stored
        return f"{self.base_url}/{repo}/resolve/{rev}/{path}"

    async def _hf_resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        rev, path = request.match_info["rev"], request.match_info["path"]
        repo = self.hf.get(repo_id)
        token = self._token(request)

        def error(status: int, code: str, message: str) -> web.Response:
            return web.json_response(
                {"error": message},
                status=status,
                headers={"X-Error-Code": code, "X-Error-Message": message},
            )

        if repo is None:
            return error(401, "RepoNotFound", "Repository not found")
        if repo.gated and (token is None or token not in repo.granted_tokens):
            if token is None:
                return error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
            return error(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit https://huggingface.co/{repo_id} to ask for access.",
            )
        if rev not in repo.files:
            return error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        stored = repo.files[rev].get(path)
        if stored is None:
            return error(404, "EntryNotFound", f"{path} does not exist on {rev!r}")
        sha = self._sha(stored)
        expires = int(time.time()) + 3600
        disposition = quote("attachment; filename=" + path.rsplit("/", 1)[-1])
        location = (
            f"{self.cdn_url}/cdn/{self._cdn_key(stored)}?Expires={expires}&X-Amz-Signature=sig"
            f"&response-content-disposition={disposition}"
        )
        return web.Response(
            status=302,
            body=b"Found. Redirecting",
            headers={
                "Location": location,
                "X-Linked-Size": str(stored.size),
                "X-Linked-Etag": f'"{sha}"',
                "ETag": f'"{hashlib.sha1(sha.encode()).hexdigest()}"',
                "X-Repo-Commit": COMMIT,
                "Accept-Ranges": "bytes",
            },
        )

    async def _hf_tree(self, request: web.Request) -> web.Response:
        repo = self.hf.get(request.match_info["repo"])
        rev = request.match_info["rev"]
        if repo is None:
            return web.json_response(
                {"error": "Repository not found"},
                status=404,
                headers={"X-Error-Code": "RepoNotFound"},
            )
        if repo.gated and self._token(request) not in repo.granted_tokens:
            return web.json_response(
                {"error": "gated"}, status=401 if self._token(request) is None else 403,
                headers={"X-Error-Code": "GatedRepo"},
            )  # fmt: skip
        if rev not in repo.files:
            return web.json_response(
                {"error": "Invalid rev"}, status=404, headers={"X-Error-Code": "RevisionNotFound"}
            )
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, stored in sorted(repo.files[rev].items()):
            parts = path.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            sha = self._sha(stored)
            entries.append(
                {
                    "type": "file",
                    "oid": hashlib.sha1(sha.encode()).hexdigest(),
                    "size": stored.size,
                    "path": path,
                    "lfs": {"oid": sha, "size": stored.size, "pointerSize": 134},
                }
            )
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in dirs]
        return web.json_response(entries)
