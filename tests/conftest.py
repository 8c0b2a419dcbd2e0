"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from comfyfleet.testing.modelserver import ModelServer
from pg import PgCluster, start_cluster

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")

# (wave2: fleet-api) every `pool serve` the tests start needs the lease API's operator token
# (tests of its absence remove it from the child's environment)
os.environ.setdefault("COMFYFLEET_API_TOKEN", "test-operator-" + secrets.token_hex(16))


@pytest.fixture
def point_sources_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModelServer], None]:
    """Point HF and Civitai URLs at a model server, with no token in the environment."""

    def point(srv: ModelServer) -> None:
        for name, value in srv.endpoint_env().items():
            monkeypatch.setenv(name, value)
        for var in TOKEN_VARS:
            monkeypatch.delenv(var, raising=False)

    return point


@pytest.fixture
def server(point_sources_at: Callable[[ModelServer], None]) -> Iterator[ModelServer]:
    """The model server in a background thread (CLI code runs its own event loop)."""
    srv = ModelServer()
    srv.start_in_thread()
    point_sources_at(srv)
    try:
        yield srv
    finally:
        srv.stop_thread()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the whole session (each test makes its own database)."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pool.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"t_{secrets.token_hex(6)}")
