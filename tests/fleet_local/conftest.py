"""Fixtures for the local provider: the demo world (stand-in ComfyUI, real model server)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.fleet.providers.local import LocalProvider
from comfyfleet.testing.demo_fixture import DemoWorld, build_demo, free_port
from comfyfleet.testing.modelserver import ModelServer
from comfyfleet.testing.repos import build_test_wheels, make_venv


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the fake torch 1.0.0: ComfyUI's interpreter (pip never goes online)."""
    wheels = build_test_wheels(tmp_path_factory.mktemp("wheels"))
    return make_venv(
        tmp_path_factory.mktemp("venv") / "venv", wheels=wheels, packages=("torch==1.0.0",)
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelServer]:
    srv = ModelServer()
    srv.start_in_thread()
    for key, value in srv.endpoint_env().items():
        monkeypatch.setenv(key, value)  # the provision subprocesses inherit it
    yield srv
    srv.stop_thread()


@pytest.fixture
def world(tmp_path: Path, server: ModelServer, venv_python: Path) -> DemoWorld:
    return build_demo(tmp_path / "world", server, python=str(venv_python))


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    """Two slots with their own ports and GPUs; every slot is destroyed at teardown."""
    prov = LocalProvider(tmp_path / "base", [free_port(), free_port()], [3, 5], pool="lp")
    yield prov
    for name in prov.slots:
        asyncio.run(_force_destroy(prov, name))


async def _force_destroy(prov: LocalProvider, name: str) -> None:
    await prov.stop_slot(prov.slots[name])
    claim = prov.slots[name].claim_path
    claim.unlink(missing_ok=True)


class FileSink:
    """A durable sink for the tests: bytes appended to a file, then the checkpoint replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = path.with_name(path.name + ".checkpoint")
        self._latest: dict[str, Any] | None = None
        self._fh = None

    def resume(self) -> dict[str, Any] | None:
        doc = json.loads(self.state.read_text()) if self.state.exists() else None
        size = doc["size"] if doc else 0
        self._fh = open(self.path, "a+b")
        self._fh.truncate(size)
        return doc["checkpoint"] if doc else None

    def append(self, chunk: bytes, checkpoint: dict[str, Any]) -> None:
        assert self._fh is not None
        self._fh.write(chunk)
        self._latest = checkpoint

    def flush(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._latest is not None:
            doc = {"size": self._fh.tell(), "checkpoint": self._latest}
            tmp = self.state.with_name(self.state.name + ".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.state)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
