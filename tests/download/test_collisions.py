"""Two sources, one destination: the later entry fails before any of its bytes is written."""

from __future__ import annotations

import json

from comfyfleet.download import load_verified

from .conftest import blob, manifest, model_dir, run, sha

MB = 1_000_000


async def test_two_civitai_files_with_one_served_name_never_mix(server, tmp_path, monkeypatch):
    # Only Content-Disposition names these files: the manifest alone cannot see the collision.
    monkeypatch.setenv("CIVITAI_ENDPOINT", server.base_url)
    first, second = blob(2 * MB, 41), blob(2 * MB, 42)
    url1 = server.add_civitai(101, first, "same.safetensors")
    url2 = server.add_civitai(102, second, "same.safetensors")
    m = manifest([{"url": url1, "folder": "loras"}, {"url": url2, "folder": "loras"}])

    report = await run(m, tmp_path)

    ok, failed = report.files
    assert ok.status == "verified" and failed.status == "failed"
    assert "models[1]" in failed.error and "models[0]" in failed.error
    assert "loras/same.safetensors" in failed.error and "filename" in failed.error
    dest = model_dir(tmp_path, "loras") / "same.safetensors"
    assert dest.read_bytes() == first
    # verified.json holds the hash of exactly the bytes that landed.
    rec = load_verified(tmp_path)["ComfyUI/models/loras/same.safetensors"]
    assert rec["sha256"] == sha(first) == sha(dest.read_bytes())
    # Not one byte of the second file was fetched (only its 1-byte name probe).
    key2 = server.civitai[102].key
    gets = [r for r in server.requests_for(key2, "GET") if r.range != "bytes=0-0"]
    assert gets == []
    assert not (dest.parent / "same.safetensors.part").exists()


async def test_a_follower_whose_name_is_taken_fails_and_the_first_file_stays(server, tmp_path):
    # models[1] repeats models[0]'s URL into another folder (a hard link) while models[2],
    # from another host path, is served under the same final name in that folder.
    data, other = blob(1 * MB, 43), blob(1 * MB, 44)
    url = server.add_file("a/x.safetensors", data)
    other_url = server.add_file("b/y.safetensors", other)
    server.plain["b/y.safetensors"].content_disposition = 'attachment; filename="x.safetensors"'
    m = manifest(
        [
            {"url": url, "folder": "checkpoints"},
            {"url": other_url, "folder": "loras"},
            {"url": url, "folder": "loras"},
        ]
    )

    report = await run(m, tmp_path)

    statuses = [f.status for f in report.files]
    assert statuses == ["verified", "verified", "failed"]
    assert "models[2]" in report.files[2].error and "models[1]" in report.files[2].error
    assert (model_dir(tmp_path, "loras") / "x.safetensors").read_bytes() == other
    verified = json.loads((tmp_path / ".comfyfleet" / "verified.json").read_text())
    assert verified["ComfyUI/models/loras/x.safetensors"]["sha256"] == sha(other)


async def test_subfolder_lands_below_its_folder(server, tmp_path):
    data = blob(1 * MB, 45)
    url = server.add_file("sub/z.safetensors", data)
    m = manifest([{"url": url, "folder": "checkpoints", "subfolder": "SDXL/base"}])

    report = await run(m, tmp_path)

    assert report.ok
    dest = model_dir(tmp_path) / "SDXL" / "base" / "z.safetensors"
    assert report.files[0].path == dest and dest.read_bytes() == data
    assert "ComfyUI/models/checkpoints/SDXL/base/z.safetensors" in load_verified(tmp_path)
    seen = len(server.requests)
    again = await run(m, tmp_path)
    assert again.files[0].status == "skipped" and len(server.requests) == seen


async def test_a_served_name_with_a_control_character_is_refused(server, tmp_path):
    data = blob(1 * MB, 46)
    url = server.add_file("ctl/q", data)
    forged = "attachment; filename*=UTF-8''x%0APROVISIONING%20COMPLETE.safetensors"
    server.plain["ctl/q"].content_disposition = forged
    report = await run(manifest([{"url": url, "folder": "checkpoints"}]), tmp_path)

    # refused as a name at the boundary (sources.filenames): the URL's name is used instead
    assert report.files[0].status == "verified" and report.files[0].filename == "q"
    for path in (tmp_path / "ComfyUI").rglob("*") if (tmp_path / "ComfyUI").exists() else []:
        assert "\n" not in path.name
