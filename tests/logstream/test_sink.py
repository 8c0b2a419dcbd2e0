"""The sink interface as the fleet's store uses it: batched, chunks and checkpoint together."""

from __future__ import annotations

import asyncio
import copy

from follow_helpers import DONE, append, fast_options, lines, until

from comfyfleet.logstream import follow
from comfyfleet.logstream.core import FileIdentity, Position


class StoreSink:
    """Like a database table of chunks plus a checkpoint row, written in one transaction at
    flush; what was appended but not flushed is lost when the 'process' dies."""

    def __init__(self, store: dict) -> None:
        self.store = store  # survives a crash: {"chunks": [...], "checkpoint": ...}
        self.pending: list[bytes] = []
        self.latest = None
        self.flushes = 0

    def resume(self):
        self.pending = []
        return copy.deepcopy(self.store.get("checkpoint"))

    def append(self, chunk: bytes, checkpoint) -> None:
        self.pending.append(chunk)
        self.latest = checkpoint

    def flush(self) -> None:
        if self.latest is None:
            return
        self.store.setdefault("chunks", []).extend(c for c in self.pending if c)
        self.store["checkpoint"] = copy.deepcopy(self.latest)
        self.pending = []
        self.flushes += 1

    def close(self) -> None:
        pass

    def text(self) -> bytes:
        return b"".join(self.store.get("chunks", []))


class CrashingSink(StoreSink):
    """Dies (without a final flush) once it has flushed ``after`` times."""

    def __init__(self, store: dict, after: int) -> None:
        super().__init__(store)
        self.after = after

    def flush(self) -> None:
        if self.flushes >= self.after:
            self.pending = []  # the transaction never happens
            return
        super().flush()


async def test_a_store_sink_resumes_exactly_once_after_losing_unflushed_chunks(
    target_for, remote_log
):
    store: dict = {}
    remote_log.write_bytes(b"")
    body = lines(0, 2000)
    target = target_for(remote_log, output=None)
    crashing = CrashingSink(store, after=3)
    task = asyncio.create_task(follow(target, fast_options(), sink=crashing))

    async def writer() -> None:
        for i in range(0, len(body), 800):
            append(remote_log, body[i : i + 800])
            await asyncio.sleep(0.01)

    writing = asyncio.create_task(writer())
    await until(lambda: crashing.flushes >= 3 and crashing.pending, what="a lost batch")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 0 < len(crashing.text()) < len(body)  # some delivered, some appended and lost
    await writing
    append(remote_log, DONE)
    result = await follow(target, fast_options(), sink=StoreSink(store))
    assert result.outcome == "complete"
    assert b"".join(store["chunks"]) == body + DONE
    assert store["checkpoint"]["output_size"] == len(body + DONE)


async def test_start_position_skips_what_an_earlier_run_wrote(target_for, remote_log):
    old = lines(0, 10) + DONE
    remote_log.write_bytes(old)
    st = remote_log.stat()
    start = Position(FileIdentity(st.st_dev, st.st_ino, old[:1024]), offset=len(old))
    sink = StoreSink({})
    task = asyncio.create_task(
        follow(target_for(remote_log, output=None), fast_options(), sink=sink, start=start)
    )
    await asyncio.sleep(0.3)  # an old marker must not end this follow
    assert not task.done()
    remote_log.rename(remote_log.with_suffix(".log.1"))  # the new run rotates the log
    append(remote_log, lines(10, 20) + DONE)
    result = await task
    assert result.outcome == "complete"
    assert sink.text() == lines(10, 20) + DONE
