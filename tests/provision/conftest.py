"""Fixtures for provisioning tests: real git repos, a real venv, the real local model server."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import comfyfleet.download
from comfyfleet import runtime
from comfyfleet.testing.demo_fixture import DemoWorld, build_demo
from comfyfleet.testing.modelserver import ModelServer
from comfyfleet.testing.repos import build_test_wheels, make_venv


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Local wheels: fake torch 1.0.0/2.0.0 and standin-helper (pip never goes online)."""
    return build_test_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Path:
    """A venv (system site-packages visible) with the fake torch 1.0.0: ComfyUI's interpreter."""
    return make_venv(
        tmp_path_factory.mktemp("venv") / "venv", wheels=wheels, packages=("torch==1.0.0",)
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelServer]:
    srv = ModelServer()
    srv.start_in_thread()
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    yield srv
    srv.stop_thread()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The provisioning root; any ComfyUI started in it is stopped at teardown."""
    path = tmp_path / "root"
    yield path
    asyncio.run(runtime.stop(path, grace=5))


@pytest.fixture
def world(tmp_path: Path, server: ModelServer, venv_python: Path) -> DemoWorld:
    """The demo world (stand-in ComfyUI, one critical node, three models, a workflow)."""
    return build_demo(tmp_path / "world", server, python=str(venv_python))


# --- the download engine ------------------------------------------------------------------
# Until comfyfleet.download exports download_all, a minimal stand-in engine (test-only) keeps
# the provisioning tests meaningful; once the engine lands the real one is used unchanged.

HAVE_ENGINE = hasattr(comfyfleet.download, "download_all")


@dataclass
class _File:
    folder: str
    filename: str
    status: str
    bytes: int
    sha256: str | None
    error: str | None
    required: bool
    path: Path


@dataclass
class _Report:
    ok: bool
    files: list[_File]
    bytes: int
    seconds: float

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "files": [
                {
                    k: getattr(f, k)
                    for k in ("folder", "filename", "status", "bytes", "sha256", "error")
                }
                for f in self.files
            ],
            "bytes": self.bytes,
            "seconds": self.seconds,
        }


async def _stub_download_all(manifest, root, log, *, progress=None):  # pragma: no cover - temporary
    import hashlib

    import aiohttp

    state_file = root / ".comfyfleet" / "verified.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    files = []
    total = 0
    async with aiohttp.ClientSession() as s:
        for e in manifest.models:
            name = e.filename or e.url.rsplit("/", 1)[-1]
            path = manifest.model_path(root, e, name)
            key = os.path.relpath(path, root)
            rec = state.get(key)
            if rec and path.exists() and path.stat().st_mtime_ns == rec["mtime_ns"]:
                files.append(
                    _File(e.folder, name, "skipped", 0, rec["sha256"], None, e.required, path)
                )
                continue
            try:
                async with s.get(e.url) as r:
                    r.raise_for_status()
                    data = await r.read()
            except Exception as exc:
                files.append(_File(e.folder, name, "failed", 0, None, str(exc), e.required, path))
                log.emit("file_failed", folder=e.folder, filename=name, error=str(exc))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            st = path.stat()
            state[key] = {
                "size": st.st_size,
                "sha256": sha,
                "mtime_ns": st.st_mtime_ns,
                "url": e.url,
            }
            total += len(data)
            log.emit("file_verified", folder=e.folder, filename=name, bytes=len(data))
            files.append(_File(e.folder, name, "verified", len(data), sha, None, e.required, path))
    state_file.write_text(json.dumps(state))
    ok = not any(f.status == "failed" and f.required for f in files)
    return _Report(ok, files, total, 0.0)


@pytest.fixture(autouse=True)
def _engine(monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAVE_ENGINE:
        import comfyfleet.provision

        async def download_models(manifest, root, log, *, progress):
            return await _stub_download_all(manifest, root, log, progress=progress)

        monkeypatch.setattr(comfyfleet.provision, "download_models", download_models)
