"""A resume never splices two versions of a file: it needs a validator (sent as If-Range) or
a sha256; without either the download restarts from byte 0."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from comfyfleet.download.partfile import sidecar_path
from comfyfleet.testing.modelserver import Faults, make_safetensors

from .conftest import manifest, run

SIZE = 4 << 20
OLD = make_safetensors(SIZE, seed=1)
NEW = make_safetensors(SIZE, seed=2)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def interrupted(m, root, final) -> list[list[int]]:
    """Run a download until its sidecar records completed bytes, then cancel it (a Ctrl-C);
    return the completed ranges the sidecar holds."""
    task = asyncio.create_task(run(m, root))
    side = sidecar_path(final)
    deadline = time.monotonic() + 30
    done: list[list[int]] = []
    while not done:
        assert time.monotonic() < deadline, "no progress recorded within 30 s"
        assert not task.done(), "the download finished before it could be interrupted"
        await asyncio.sleep(0.05)
        try:
            done = json.loads(side.read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    doc = json.loads(side.read_text())
    assert doc["done"] and sum(e - s for s, e in doc["done"]) < SIZE
    return doc["done"]


def slow() -> Faults:
    return Faults(rate=1 << 20)  # 1 MiB/s per connection: a few seconds for the file


async def test_no_validator_no_sha256_restarts_from_zero_instead_of_splicing(tmp_path, server):
    url = server.add_file("nv/model.bin", OLD, faults=Faults(no_validator=True, rate=1 << 20))
    m = manifest([{"url": url, "folder": "loras"}])
    final = tmp_path / "ComfyUI" / "models" / "loras" / "model.bin"
    await interrupted(m, tmp_path, final)
    server.replace_file("nv/model.bin", NEW)  # same size, same URL, no way to tell
    server.plain["nv/model.bin"].faults.rate = None
    before = len(server.requests)
    report = await run(m, tmp_path)
    assert report.ok
    assert final.read_bytes() == NEW
    assert report.files[0].sha256 == sha(NEW)
    assert report.bytes == SIZE  # every byte fetched again: nothing kept from the old version
    ranges = [r.range for r in server.requests[before:] if r.method == "GET"]
    assert ranges and all("If-Range" not in r.headers for r in server.requests[before:])


async def test_no_validator_but_sha256_resumes(tmp_path, server):
    url = server.add_file("ns/model.bin", OLD, faults=Faults(no_validator=True, rate=1 << 20))
    m = manifest([{"url": url, "folder": "loras", "sha256": sha(OLD)}])
    final = tmp_path / "ComfyUI" / "models" / "loras" / "model.bin"
    kept = await interrupted(m, tmp_path, final)
    server.plain["ns/model.bin"].faults.rate = None
    report = await run(m, tmp_path)
    assert report.ok and final.read_bytes() == OLD
    assert report.bytes == SIZE - sum(e - s for s, e in kept)  # the sha256 vouches at the end


async def test_hugging_face_resume_sends_if_range_with_the_cdn_validator(tmp_path, server):
    url = server.add_hf_file("org/r", "model.safetensors", OLD, faults=slow())
    m = manifest([{"url": url, "folder": "loras"}])
    final = tmp_path / "ComfyUI" / "models" / "loras" / "model.safetensors"
    await interrupted(m, tmp_path, final)
    first_etags = {
        r.headers.get("If-Range") for r in server.requests_for("/cdn/", "GET")
    }  # (the first run's first requests knew no validator yet)
    cdn_etag = f'"{sha(OLD)[:32]}"'
    assert json.loads(sidecar_path(final).read_text())["etag"] == cdn_etag
    server.cdn[next(iter(server.cdn))].faults.rate = None
    before = len(server.requests)
    report = await run(m, tmp_path)
    assert report.ok and final.read_bytes() == OLD
    resumed = [r for r in server.requests[before:] if "/cdn/" in r.path and r.method == "GET"]
    assert resumed and all(r.headers.get("If-Range") == cdn_etag for r in resumed)
    assert None in first_etags


async def test_a_server_that_ignores_if_range_cannot_splice_a_new_version(tmp_path, server):
    faults = Faults(ignore_if_range=True, rate=1 << 20)
    url = server.add_file("liar/model.bin", OLD, faults=faults)
    m = manifest([{"url": url, "folder": "loras"}])
    final = tmp_path / "ComfyUI" / "models" / "loras" / "model.bin"
    await interrupted(m, tmp_path, final)
    server.replace_file("liar/model.bin", NEW)  # a new ETag, but 206 to any If-Range
    faults.rate = None
    report = await run(m, tmp_path)
    assert report.ok and final.read_bytes() == NEW
    assert report.files[0].sha256 == sha(NEW)
