"""Fixtures for the download engine tests: a real model server, manifests, run helpers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.download import DownloadReport, download_all
from comfyfleet.events import RunLog
from comfyfleet.manifest import Manifest, parse_manifest
from comfyfleet.testing.modelserver import ModelServer, make_safetensors

#: fast test settings: short stall window, small segments so files split into several ranges
FAST = {
    "concurrency": 4,
    "connections_per_file": 4,
    "stall_timeout": "1s",
    "min_speed": "64KiB",
    "retries": 4,
    "segment_size": "1MiB",
}


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    async with ModelServer() as srv:
        yield srv


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    """A valid safetensors file of ``size`` bytes."""
    return make_safetensors(size, seed)


def manifest(models: list[dict[str, Any]], **download: Any) -> Manifest:
    return parse_manifest({"download": {**FAST, **download}, "models": models})


def model_dir(root: Path, folder: str = "checkpoints") -> Path:
    return root / "ComfyUI" / "models" / folder


async def run(m: Manifest, root: Path) -> DownloadReport:
    log = RunLog(root, "download")
    try:
        return await download_all(m, root, log)
    finally:
        log.close()


def errors_log(root: Path) -> str:
    p = root / ".comfyfleet" / "errors.log"
    return p.read_text() if p.exists() else ""


def events(root: Path, name: str | None = None) -> list[dict[str, Any]]:
    lines = (root / ".comfyfleet" / "events.jsonl").read_text().splitlines()
    evs = [json.loads(line) for line in lines]
    return [e for e in evs if name is None or e["event"] == name]


def no_corrupt_final(root: Path, expected: dict[str, bytes]) -> None:
    """Every model file that exists under root has exactly the expected bytes."""
    for path in (root / "ComfyUI" / "models").rglob("*"):
        if path.is_file() and not path.name.endswith((".part", ".part.json")):
            assert path.name in expected, f"unexpected final file {path}"
            assert path.read_bytes() == expected[path.name], f"{path} is corrupt"
