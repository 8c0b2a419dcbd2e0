"""The scheduler and the verified state: skips, re-checks, links, mirrors, caps, cancellation."""

from __future__ import annotations

import asyncio
import json
import os

from comfyfleet.download import download_all, load_verified
from comfyfleet.events import RunLog

from .conftest import blob, errors_log, events, manifest, model_dir, no_corrupt_final, run, sha

MB = 1_000_000


def entry(url, data=None, folder="checkpoints", **kw):
    return {"url": url, "folder": folder, **({"sha256": sha(data)} if data else {}), **kw}


async def test_rerun_skips_verified_files_without_network(server, tmp_path):
    data = blob(2 * MB, 1)
    url = server.add_file("a.safetensors", data)
    m = manifest([entry(url, data), entry(url.replace("a.s", "a.s"), folder="loras")])
    first = await run(m, tmp_path)
    assert [f.status for f in first.files] == ["verified", "verified"]
    assert set(load_verified(tmp_path)) == {
        "ComfyUI/models/checkpoints/a.safetensors",
        "ComfyUI/models/loras/a.safetensors",
    }
    seen = len(server.requests)
    second = await run(m, tmp_path)
    assert [f.status for f in second.files] == ["skipped", "skipped"]
    assert len(server.requests) == seen  # no network at all
    assert second.ok and second.bytes == 0


async def test_existing_unverified_file_is_rechecked_never_trusted(server, tmp_path):
    data = blob(2 * MB, 2)
    url = server.add_file("b.safetensors", data)
    dest = model_dir(tmp_path) / "b.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[:MB])  # a truncated leftover of an older tool
    m = manifest([entry(url, data, filename="b.safetensors")])
    report = await run(m, tmp_path)
    assert report.files[0].status == "verified" and dest.read_bytes() == data

    # The right bytes, but not recorded: re-hashed locally and skipped without network.
    (tmp_path / ".comfyfleet" / "verified.json").unlink()
    seen = len(server.requests)
    report = await run(m, tmp_path)
    assert report.files[0].status == "skipped" and len(server.requests) == seen


async def test_changed_verified_file_is_downloaded_again(server, tmp_path):
    data = blob(1 * MB, 3)
    url = server.add_file("c.safetensors", data)
    m = manifest([entry(url)])  # no sha256 in the manifest: size + content checks only
    await run(m, tmp_path)
    dest = model_dir(tmp_path) / "c.safetensors"
    with open(dest, "r+b") as fh:
        fh.truncate(1000)  # size/mtime no longer match the record
    report = await run(m, tmp_path)
    assert report.files[0].status == "verified" and dest.read_bytes() == data


async def test_identical_urls_download_once_and_hard_link(server, tmp_path):
    data = blob(2 * MB, 4)
    url = server.add_file("same.safetensors", data)
    m = manifest([entry(url, data), entry(url, data, folder="unet"), entry(url, folder="clip")])
    report = await run(m, tmp_path)
    assert report.ok and [f.status for f in report.files] == ["verified"] * 3
    gets = server.requests_for("same.safetensors", "GET")
    assert sum(int(r.range.split("-")[1]) - int(r.range.split("=")[1].split("-")[0]) + 1
               for r in gets) == len(data)  # fmt: skip
    inodes = {os.stat(f.path).st_ino for f in report.files}
    assert len(inodes) == 1 and report.bytes == len(data)


async def test_optional_failure_only_warns(server, tmp_path):
    data = blob(1 * MB, 5)
    good = server.add_file("good.safetensors", data)
    missing = f"{server.base_url}/files/missing.safetensors"
    report = await run(manifest([entry(good, data), entry(missing, required=False)]), tmp_path)
    assert report.ok
    failed = events(tmp_path, "file_failed")
    assert failed and failed[0]["required"] is False
    assert "optional" in errors_log(tmp_path)
    assert report.to_json()["files"][1]["status"] == "failed"


async def test_required_failure_fails_the_run_after_the_others_finish(server, tmp_path):
    big = blob(4 * MB, 6)
    slow = server.add_file("slow.safetensors", big, rate=4 * MB)
    missing = f"{server.base_url}/files/nope.safetensors"
    report = await run(manifest([entry(missing), entry(slow, big)]), tmp_path)
    assert not report.ok
    by = {f.filename: f for f in report.files}
    assert by["slow.safetensors"].status == "verified"
    assert by["nope.safetensors"].status == "failed" and "404" in by["nope.safetensors"].error
    assert "FAILED" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {"slow.safetensors": big})


async def test_mirror_is_used_when_the_primary_fails(server, tmp_path):
    data = blob(2 * MB, 7)
    bad = server.add_file("primary/m.safetensors", data, corrupt=True)
    mirror = server.add_file("mirror/m.safetensors", data)
    report = await run(manifest([entry(bad, data, mirrors=[mirror])]), tmp_path)
    assert report.ok and report.files[0].status == "verified"
    assert "trying a mirror" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {"m.safetensors": data})


async def test_per_host_cap_and_largest_first(server, tmp_path):
    sizes = [1 * MB, 3 * MB, 2 * MB]
    datas = [blob(s, 10 + i) for i, s in enumerate(sizes)]
    urls = [server.add_file(f"f{i}.safetensors", d) for i, d in enumerate(datas)]
    m = manifest(
        [entry(u, d, size=len(d)) for u, d in zip(urls, datas, strict=True)],
        per_host={"127.0.0.1": 1},
    )
    report = await run(m, tmp_path)
    assert report.ok
    order = [e["filename"] for e in events(tmp_path) if e["event"] in ("file_started",)]
    assert order == ["f1.safetensors", "f2.safetensors", "f0.safetensors"]
    active = 0
    for e in events(tmp_path):
        active += {"file_started": 1, "file_verified": -1}.get(e["event"], 0)
        assert active <= 1


async def test_cancel_leaves_a_resumable_part_and_no_final_file(server, tmp_path):
    data = blob(4 * MB, 20)
    url = server.add_file("cancel.safetensors", data, rate=1 * MB)
    m = manifest([entry(url, data)], connections_per_file=2)
    log = RunLog(tmp_path, "download")
    progressed = asyncio.Event()
    log.subscribe(lambda ev: ev["event"] == "file_progress" and ev["bytes"] > 0
                  and progressed.set())  # fmt: skip
    task = asyncio.create_task(download_all(m, tmp_path, log))
    await asyncio.wait_for(progressed.wait(), 20)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    log.close()
    dest = model_dir(tmp_path) / "cancel.safetensors"
    assert not dest.exists()
    side = json.loads((dest.parent / "cancel.safetensors.part.json").read_text())
    done = sum(e - s for s, e in side["done"])
    assert 0 < done < len(data)

    server.plain["cancel.safetensors"].faults.rate = None
    before = len(server.requests)
    report = await run(m, tmp_path)
    assert report.ok and report.files[0].status == "verified"
    assert report.bytes == len(data) - done  # only the missing ranges were fetched
    again = [r for r in server.requests[before:] if r.method == "GET"]
    assert all(r.range and not r.range.startswith("bytes=0-") for r in again) or done < MB
    assert dest.read_bytes() == data
    assert not (dest.parent / "cancel.safetensors.part").exists()


async def test_status_json_and_events_describe_the_run(server, tmp_path):
    data = blob(1 * MB, 21)
    url = server.add_file("s.safetensors", data)
    await run(manifest([entry(url, data)]), tmp_path)
    status = json.loads((tmp_path / ".comfyfleet" / "status.json").read_text())
    assert status["files"]["checkpoints/s.safetensors"]["status"] == "verified"
    names = [e["event"] for e in events(tmp_path)]
    for name in ("file_queued", "file_started", "file_verified"):
        assert name in names
    ver = events(tmp_path, "file_verified")[0]
    assert ver["bytes"] == ver["total"] == len(data) and ver["sha256"] == sha(data)


async def test_a_stalling_primary_hands_over_to_a_mirror_keeping_the_bytes(server, tmp_path):
    data = blob(3 * MB, 30)
    slow = server.add_file("p/x.safetensors", data, stall_after=400_000, stall_seconds=3,
                           stall_times=50)  # fmt: skip
    mirror = server.add_file("m/x.safetensors", data)
    m = manifest([entry(slow, data, mirrors=[mirror])], connections_per_file=2)
    report = await run(m, tmp_path)
    assert report.ok and report.files[0].status == "verified"
    assert "stalled" in errors_log(tmp_path) and "trying a mirror" in errors_log(tmp_path)
    mirror_gets = server.requests_for("/files/m/", "GET")
    assert mirror_gets and all(not r.range.startswith("bytes=0-") for r in mirror_gets)
    no_corrupt_final(tmp_path, {"x.safetensors": data})
