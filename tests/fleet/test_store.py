"""The store on SQLite and on PostgreSQL: schema version, intents, CAS transitions, history."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from comfyfleet.fleet.states import TRANSITIONS, IllegalTransition, State
from comfyfleet.fleet.store import Store, StoreError, async_url

S = State


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_intent_row_is_committed_and_seen_by_a_second_connection(store_url: str) -> None:
    clock = Clock()
    a = await Store.open(store_url, pool="sdxl", clock=clock)
    b = await Store.open(store_url, pool="sdxl", clock=clock)
    try:
        row = await a.add_intent(
            row_id="r1", label="comfyfleet-sdxl-00112233aabb", provider_kind="vast"
        )
        assert row.state is S.REQUESTED and row.provider_id is None
        seen = await b.live()
        assert [r.label for r in seen] == ["comfyfleet-sdxl-00112233aabb"]
    finally:
        await a.close()
        await b.close()


async def test_transitions_are_compare_and_set_with_history(store_url: str) -> None:
    clock = Clock()
    store = await Store.open(store_url, pool="sdxl", clock=clock)
    try:
        await store.add_intent(
            row_id="r1", label="comfyfleet-sdxl-00112233aabb", provider_kind="vast"
        )
        clock.t = 1001
        assert await store.transition("r1", S.REQUESTED, S.CREATING, offer_id="o1", dph=0.4)
        # a second writer holding the stale state loses
        assert not await store.transition("r1", S.REQUESTED, S.CREATING)
        clock.t = 1002
        assert await store.transition("r1", S.CREATING, S.BOOTING, provider_id="777")
        clock.t = 1003
        assert await store.transition("r1", S.BOOTING, S.FAILED, reason="exited")
        row = await store.get("r1")
        assert row is not None
        assert (row.state, row.provider_id, row.offer_id, row.dph) == (S.FAILED, "777", "o1", 0.4)
        assert row.failure_reason == "exited" and row.state_since == 1003
        history = await store.history("r1")
        assert [(h.from_state, h.to_state) for h in history] == [
            (None, S.REQUESTED),
            (S.REQUESTED, S.CREATING),
            (S.CREATING, S.BOOTING),
            (S.BOOTING, S.FAILED),
        ]
        assert [h.at for h in history] == [1000, 1001, 1002, 1003]
    finally:
        await store.close()


async def test_illegal_transitions_raise_and_change_nothing(store_url: str) -> None:
    store = await Store.open(store_url, pool="sdxl")
    try:
        await store.add_intent(
            row_id="r1", label="comfyfleet-sdxl-00112233aabb", provider_kind="vast"
        )
        with pytest.raises(IllegalTransition):
            await store.transition("r1", S.REQUESTED, S.BOOTING)
        row = await store.get("r1")
        assert row is not None and row.state is S.REQUESTED
    finally:
        await store.close()


def test_the_transition_table_is_the_issues() -> None:
    table = {s: set(n) for s, n in TRANSITIONS.items()}
    assert table[S.REQUESTED] == {S.CREATING}
    assert table[S.CREATING] == {S.BOOTING, S.FAILED, S.LOST}
    assert table[S.DESTROYING] == {S.DESTROYED}
    assert table[S.FAILED] == {S.DESTROYING}
    assert table[S.DESTROYED] == set() and table[S.LOST] == set()
    # nothing leaves destroying except the provider's confirmation
    assert all(S.DESTROYED not in n for s, n in table.items() if s is not S.DESTROYING)


async def test_concurrent_writers_only_one_wins_each_transition(store_url: str) -> None:
    stores = [await Store.open(store_url, pool="sdxl") for _ in range(4)]
    try:
        await stores[0].add_intent(
            row_id="r1", label="comfyfleet-sdxl-00112233aabb", provider_kind="vast"
        )
        wins = await asyncio.gather(
            *(
                s.transition("r1", S.REQUESTED, S.CREATING, offer_id=str(i))
                for i, s in enumerate(stores)
            )
        )
        assert sum(wins) == 1
        history = await stores[0].history("r1")
        assert [h.to_state for h in history].count(S.CREATING) == 1
    finally:
        for s in stores:
            await s.close()


async def test_pools_sharing_a_database_do_not_see_each_other(store_url: str) -> None:
    a = await Store.open(store_url, pool="sdxl")
    b = await Store.open(store_url, pool="sdxl-xl")
    try:
        await a.add_intent(row_id="r1", label="comfyfleet-sdxl-00112233aabb", provider_kind="vast")
        await b.set_draining(True)
        assert await b.live() == []
        assert not (await a.pool_row()).draining and (await b.pool_row()).draining
    finally:
        await a.close()
        await b.close()


async def test_draining_and_backoff_survive_a_reopen(store_url: str) -> None:
    clock = Clock(5000)
    store = await Store.open(store_url, pool="sdxl", clock=clock)
    await store.set_draining(True)
    await store.note_create_failure(10, 100)
    await store.note_create_failure(10, 100)
    row = await store.note_create_failure(10, 100)
    assert (row.failures, row.next_create_at) == (3, 5040)  # 10 · 2²
    await store.close()
    store = await Store.open(store_url, pool="sdxl", clock=clock)
    try:
        row = await store.pool_row()
        assert row.draining and row.failures == 3
        await store.note_create_success()
        assert (await store.pool_row()).failures == 0
        await store.set_draining(False)
        assert not (await store.pool_row()).draining
    finally:
        await store.close()


async def test_a_store_from_a_newer_comfyfleet_refuses_to_open(store_url: str) -> None:
    store = await Store.open(store_url, pool="sdxl")
    await store.close()
    engine = create_async_engine(async_url(store_url))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    await engine.dispose()
    with pytest.raises(StoreError, match="newer than this comfyfleet") as info:
        await Store.open(store_url, pool="sdxl")
    assert info.value.exit_code == 2


async def test_unreachable_database_is_one_line_exit_2() -> None:
    with pytest.raises(StoreError) as info:
        await Store.open("postgresql://nobody@127.0.0.1:1/none", pool="sdxl")
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    with pytest.raises(StoreError, match="does not exist"):
        await Store.open("sqlite:////nonexistent-dir/x/pool.db", pool="sdxl")
