"""Fixtures for provisioning tests: real git repos, a real venv, the real local model server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def root(tmp_path: Path) -> Iterator[Path]:
    """The provisioning root; any ComfyUI started in it is stopped at teardown."""
    path = tmp_path / "root"
    yield path
    asyncio.run(runtime.stop(path, grace=5))


@pytest.fixture
def world(tmp_path: Path, server: ModelServer, venv_python: Path) -> DemoWorld:
    """The demo world (stand-in ComfyUI, one critical node, three models, a workflow)."""
    return build_demo(tmp_path / "world", server, python=str(venv_python))
