"""Replica fixtures: one PostgreSQL cluster, the Vast double in this process, three replica
configs on one store."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pg.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))  # vastdouble.py

from replicarun import Replica
from vastdouble import Timing, VastDouble

from pg import PgCluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.create_database(f"r_{secrets.token_hex(6)}")


@pytest.fixture
def double() -> Iterator[VastDouble]:
    # instances stay loading (booting) for good: the handover is about the control plane, and
    # the double's hosts have no sshd to provision
    d = VastDouble(timing=Timing(loading=100_000.0))
    d.add_offers(16)
    d.start_in_thread()
    try:
        yield d
    finally:
        d.stop_thread()


@pytest.fixture
def replicas(tmp_path: Path, double: VastDouble, pg_url: str) -> Iterator[list[Replica]]:
    """Three replica configs on one PostgreSQL store (not started)."""
    made = [Replica(tmp_path / f"r{i}", double, pg_url) for i in range(3)]
    try:
        yield made
    finally:
        for r in made:
            if r.alive():
                assert r.proc is not None
                r.proc.kill()
                r.proc.wait(timeout=10)
