"""The leader row and fencing, in process, on a real PostgreSQL (and SQLite's flock)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from replicarun import POOL

from comfyfleet.fleet.leader import Election, Fenced, SecondReplica, read_leader, single_replica
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store


async def _open(url: str) -> Store:
    return await Store.open(url, pool=POOL)


def test_takeover_only_after_expiry_and_the_epoch_goes_up_by_one(pg_url: str) -> None:
    async def go() -> None:
        store = await _open(pg_url)
        try:
            a = Election(store.engine, POOL, "a", 1.0, listen=None)
            b = Election(store.engine, POOL, "b", 1.0, listen=None)
            await a.ensure()
            await b.ensure()  # idempotent
            assert await a.take() == 1
            assert await b.take() is None  # a's lease has not expired
            assert await a.renew(1)
            row = await read_leader(store.engine, POOL)
            assert row is not None and row.holder == "a" and row.epoch == 1
            await asyncio.sleep(1.2)  # a stops renewing (paused, killed, cut off)
            assert await b.take() == 2
            assert not await a.renew(1)  # a wakes: its lease is gone
            assert await a.take() is None
            row = await read_leader(store.engine, POOL)
            assert row is not None and (row.holder, row.epoch) == ("b", 2)
        finally:
            await store.close()

    asyncio.run(go())


def test_a_fenced_store_records_nothing_once_another_replica_leads(pg_url: str) -> None:
    async def go() -> None:
        store = await _open(pg_url)
        try:
            a = Election(store.engine, POOL, "a", 1.0, listen=None)
            b = Election(store.engine, POOL, "b", 1.0, listen=None)
            await a.ensure()
            epoch = await a.take()
            assert epoch == 1
            old = store.fenced(epoch)
            await old.add_intent(
                row_id="r1", label="comfyfleet-sdxl-000000000001", provider_kind="vast"
            )
            await asyncio.sleep(1.2)
            assert await b.take() == 2
            # the woken old leader: every provider-changing intent write fails, nothing lands
            with pytest.raises(Fenced, match="epoch 1, the pool is at 2"):
                await old.add_intent(
                    row_id="r2", label="comfyfleet-sdxl-000000000002", provider_kind="vast"
                )
            with pytest.raises(Fenced):
                await old.transition("r1", State.REQUESTED, State.CREATING, reason="offer 1")
            with pytest.raises(Fenced):
                await old.update("r1", offer_id="9")
            rows = await store.rows(include_final=True)
            assert [(r.id, r.state, r.offer_id) for r in rows] == [("r1", State.REQUESTED, None)]
            # the new leader's store writes
            new = store.fenced(2)
            assert await new.transition("r1", State.REQUESTED, State.CREATING, reason="offer 1")
            # the unfenced store (lease API, destroy-all) is not gated
            await store.update("r1", offer_id="7")
            got = await store.get("r1")
            assert got is not None and got.state is State.CREATING and got.offer_id == "7"
        finally:
            await store.close()

    asyncio.run(go())


def test_a_takeover_cannot_pass_an_intent_transaction_in_flight(pg_url: str) -> None:
    """FOR SHARE on the leader row: while an intent is being written under epoch 1, no
    takeover commits (it fails after lock_timeout and is retried); then it does."""
    from sqlalchemy.exc import DBAPIError

    from comfyfleet.fleet.leader import check_fence

    async def go() -> None:
        store = await _open(pg_url)
        try:
            a = Election(store.engine, POOL, "a", 0.5, listen=None)
            b = Election(store.engine, POOL, "b", 0.5, listen=None)
            await a.ensure()
            assert await a.take() == 1
            async with store.engine.begin() as conn:
                await check_fence(conn, POOL, 1)
                await asyncio.sleep(0.7)  # the lease expires while we hold the row
                with pytest.raises(DBAPIError, match="lock"):
                    await b.take()
                row = await read_leader(store.engine, POOL)
                assert row is not None and row.epoch == 1
            assert await b.take() == 2
        finally:
            await store.close()

    asyncio.run(go())


def test_sqlite_second_lock_refused_naming_postgresql(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    code = (
        "import sys, time\n"
        "from comfyfleet.fleet.leader import single_replica\n"
        f"lock = single_replica({url!r})\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(SecondReplica) as err:
            single_replica(url)
        assert "PostgreSQL" in err.value.hint and f"pid {holder.pid}" in str(err.value)
        holder.kill()  # SIGKILL: the kernel drops the flock
        holder.wait(timeout=10)
        lock = single_replica(url)
        assert lock is not None
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert single_replica("postgresql://u@127.0.0.1:1/x") is None
