"""A local model server that behaves like Hugging Face, Civitai, their CDNs and plain hosts.

Used by the test suite, the benchmarks and ``comfyfleet demo`` (one code path for all three).
It follows the documented behaviour in DESIGN.md and reference/downloaders.md:

- HF ``HEAD/GET /{org}/{repo}/resolve/{rev}/{path}``: 302 to a CDN path with ``X-Linked-Size``,
  ``X-Linked-Etag`` (the sha256), ``X-Repo-Commit``; errors carry ``X-Error-Code``
  (``GatedRepo`` 401 without a token / 403 with a token lacking a grant, ``EntryNotFound``,
  ``RevisionNotFound``, ``RepoNotFound``). ``GET /api/models/{org}/{repo}/tree/{rev}``.
- Civitai ``GET /api/download/models/{id}``: 307 to a presigned CDN path; 401 JSON without a
  token on a login-required file, or an HTML login redirect for a browser-like User-Agent;
  HEAD always answers 401. ``GET /api/v1/model-versions/{id}`` with uppercase ``SHA256``.
- The CDN (``/cdn/...``) rejects any ``Authorization`` header with 400, as presigned R2/B2
  URLs do, and serves byte ranges.
- Plain files (``/files/...``) with optional per-file fault injection (:class:`Faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

BROWSER_TOKENS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_safetensors(size: int, seed: int = 0) -> bytes:
    """A valid safetensors file of ``size`` bytes (at least the header's length)."""
    header_obj: dict[str, Any] = {
        "__metadata__": {"generator": "comfyfleet-test", "seed": str(seed)}
    }
    n = 0
    for _ in range(3):  # the header length depends on n's digits: settle it
        header_obj["weight"] = {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}
        raw = json.dumps(header_obj, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        n = max(0, size - 8 - len(raw))
    header_obj["weight"] = {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}
    raw = json.dumps(header_obj, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    body = random.Random(seed).randbytes(n)
    return len(raw).to_bytes(8, "little") + raw + body


@dataclass
class Faults:
    """Misbehaviour injected into the serving of one file's bytes."""

    #: close the connection after this many body bytes, on the first ``reset_times`` requests
    reset_after: int | None = None
    reset_times: int = 1
    #: answer the first requests with these statuses: ``[(503, "2"), (429, None)]``
    statuses: list[tuple[int, str | None]] = field(default_factory=list)
    #: after this many body bytes, send nothing for ``stall_seconds`` (first ``stall_times``)
    stall_after: int | None = None
    stall_seconds: float = 30.0
    stall_times: int = 1
    #: answer a ranged GET with 200 and the whole body
    ignore_range: bool = False
    #: serve different bytes of the same size
    corrupt: bool = False
    #: serve an HTML page instead of the file (status 200)
    html: bool = False
    #: declare the full length but send only this many bytes, then close (first ``truncate_times``)
    truncate: int | None = None
    truncate_times: int = 1
    #: bytes per second per connection (None = as fast as possible)
    rate: int | None = None
    #: delay before answering any request, in seconds
    latency: float = 0.0
    #: HEAD is refused with 405
    no_head: bool = False
    #: answer 403 (expired signature) for the first ``expired_times`` requests (CDN objects)
    expired_times: int = 0


@dataclass
class StoredFile:
    """Bytes the server holds, from memory or a file on disk."""

    data: bytes | None = None
    path: Path | None = None
    faults: Faults = field(default_factory=Faults)
    content_disposition: str | None = None
    requests_seen: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            return os.pread(fh.fileno(), end - start, start)

    @property
    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


@dataclass
class HFRepo:
    """A Hugging Face model repository on the fake hub."""

    files: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # rev -> path -> file
    gated: bool = False
    granted_tokens: set[str] = field(default_factory=set)


@dataclass
class CivitaiVersion:
    """A Civitai model version with its primary file."""

    key: str
    filename: str
    api_name: str
    token_required: bool
    valid_tokens: set[str]


@dataclass
class RequestRecord:
    """One request the server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


class ModelServer:
    """The fake hub/CDN/plain host on 127.0.0.1 (async context manager or background thread)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
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
        self._sha_cache: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # --- content -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the hub, the Civitai API and plain files."""
        if not self.port:
            raise RuntimeError("start the model server before adding files or asking its URL")
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        """``http://127.0.0.1:<cdn_port>``: where signed redirects point (another origin)."""
        return f"http://{self.host}:{self.cdn_port}"

    def endpoint_env(self) -> dict[str, str]:
        """Environment that points Hugging Face and Civitai URLs at this server."""
        return {"HF_ENDPOINT": self.base_url, "CIVITAI_ENDPOINT": self.base_url}

    def add_file(
        self, path: str, data: bytes | Path, faults: Faults | None = None, **fault_kw: Any
    ) -> str:
        """Serve ``data`` at ``/files/<path>``; return its URL."""
        path = path.lstrip("/")
        self.plain[path] = self._stored(data, faults or Faults(**fault_kw))
        return f"{self.base_url}/files/{path}"

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
        self.cdn[f"hf/{self._sha(stored)}"] = stored
        return f"{self.base_url}/{repo}/resolve/{rev}/{path}"

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
        key = f"civitai/{version_id}/{self._sha(stored)}"
        self.cdn[key] = stored
        self.civitai[version_id] = CivitaiVersion(
            key, filename, api_name or filename, token_required, set(valid_tokens)
        )
        return f"{self.base_url}/api/download/models/{version_id}"

    def _stored(self, data: bytes | Path, faults: Faults) -> StoredFile:
        if isinstance(data, bytes | bytearray):
            return StoredFile(data=bytes(data), faults=faults)
        return StoredFile(path=Path(data), faults=faults)

    def _sha(self, stored: StoredFile) -> str:
        key = str(id(stored))
        if key not in self._sha_cache:
            self._sha_cache[key] = stored.sha256
        return self._sha_cache[key]

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
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        for attr in ("port", "cdn_port"):
            site = web.TCPSite(self._runner, self.host, getattr(self, attr), backlog=512)
            await site.start()
            setattr(self, attr, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Serve from a background thread (for synchronous callers and subprocess tests)."""
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

        self._thread = threading.Thread(target=serve, name="modelserver", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("model server did not start within 15 s")

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(15)
            self._thread = None

    # --- handlers ----------------------------------------------------------------------

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(
            RequestRecord(request.method, request.path, request.query_string, dict(request.headers))
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        return await handler(request)

    @staticmethod
    def _token(request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query.get("token")

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
            f"{self.cdn_url}/cdn/hf/{sha}?Expires={expires}&X-Amz-Signature=sig"
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

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        stored = self.cdn.get(request.match_info["key"])
        if stored is None:
            return web.Response(status=404, text="NoSuchKey")
        if "Authorization" in request.headers:
            # Presigned R2/B2 URLs reject any Authorization header (reference/downloaders.md §3.4).
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
        return await self._serve(request, stored)

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        stored = self.plain.get(request.match_info["path"])
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return await self._serve(request, stored)

    async def _serve(self, request: web.Request, stored: StoredFile) -> web.StreamResponse:
        """Serve a file's bytes with Range/If-Range and the file's injected faults."""
        f = stored.faults
        if f.latency:
            await asyncio.sleep(f.latency)
        if request.method == "HEAD" and f.no_head:
            return web.Response(status=405)
        if request.method not in {"GET", "HEAD"}:
            return web.Response(status=405)
        if f.statuses:
            status, retry_after = f.statuses.pop(0)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.Response(status=status, text=f"error {status}", headers=headers)
        if f.html:
            return web.Response(
                text="<!DOCTYPE html><html><body>Error: please log in</body></html>",
                content_type="text/html",
            )
        stored.requests_seen += 1
        size = stored.size
        etag = f'"{self._sha(stored)[:32]}"'
        start, end = 0, size  # [start, end)
        status = 200
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and not f.ignore_range and (if_range is None or if_range == etag):
            try:
                unit, spec = rng.split("=", 1)
                first, last = spec.split("-", 1)
                if unit.strip() != "bytes" or "," in spec:
                    raise ValueError(rng)
                if first == "":
                    start, end = max(0, size - int(last)), size
                else:
                    start = int(first)
                    end = min(size, int(last) + 1) if last else size
            except ValueError:
                return web.Response(status=400, text="bad range")
            if start >= size or start >= end:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        headers = {
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Content-Type": "application/octet-stream",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if stored.content_disposition:
            headers["Content-Disposition"] = stored.content_disposition
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        sent = 0
        limit = end - start
        if f.truncate is not None and f.truncate_times > 0:
            f.truncate_times -= 1
            limit = min(limit, f.truncate)
        reset_at = None
        if f.reset_after is not None and f.reset_times > 0:
            f.reset_times -= 1
            reset_at = f.reset_after
        stall_at = None
        if f.stall_after is not None and f.stall_times > 0:
            f.stall_times -= 1
            stall_at = f.stall_after
        chunk = 256 * 1024
        if f.rate:
            chunk = max(4096, min(chunk, f.rate // 20))
        t0 = time.monotonic()
        pos = start
        try:
            while sent < limit:
                n = min(chunk, limit - sent)
                if reset_at is not None and sent + n > reset_at:
                    n = max(0, reset_at - sent)
                if stall_at is not None and sent >= stall_at:
                    stall_at = None
                    await asyncio.sleep(f.stall_seconds)
                data = stored.read(pos, pos + n) if n else b""
                if f.corrupt and data:
                    data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
                if data:
                    await resp.write(data)
                sent += n
                pos += n
                if reset_at is not None and sent >= reset_at:
                    self._abort(request)
                    return resp
                if f.rate:
                    ahead = sent / f.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except ConnectionResetError:
            # The client went away (a finished or cancelled range): normal for a CDN.
            return resp
        if limit < end - start:
            self._abort(request)
            return resp
        await resp.write_eof()
        return resp

    @staticmethod
    def _abort(request: web.Request) -> None:
        """Drop the TCP connection mid-body (a reset, as a flaky CDN does)."""
        transport = request.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            transport.abort()
