"""``--content-store DIR``: a model shared by several roots is fetched once and hard-linked.

Two real ``python -m comfyfleet download`` processes run at once on two roots against the real
model server; what the server was asked for shows how often the bytes travelled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.download.content_store import ContentStore, content_key
from comfyfleet.testing.modelserver import ModelServer

from .conftest import blob, model_dir, sha

MiB = 1024 * 1024


@pytest.fixture
def threaded_server():
    srv = ModelServer()
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def write_manifest(path: Path, models: list[dict]) -> Path:
    lines = ["[download]", 'segment_size = "1MiB"', "connections_per_file = 2"]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def download(manifest: Path, root: Path, store: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "comfyfleet", "download", str(manifest), "--root", str(root),
         "--content-store", str(store), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env}, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def fetches(server: ModelServer, fragment: str) -> int:
    """How many times the bytes of ``fragment`` were fetched: each download's first range
    starts at byte 0 (the engine splits later ranges off it), so count those."""
    return sum(
        (r.range or "bytes=0-").startswith("bytes=0-") for r in server.requests_for(fragment, "GET")
    )


def test_two_parallel_downloads_on_two_roots_fetch_a_shared_model_once(
    tmp_path: Path, threaded_server: ModelServer
) -> None:
    data = blob(6 * MiB, seed=7)
    # Throttled, so the first run is still fetching while the second one looks for it.
    url = threaded_server.add_file("shared/model.safetensors", data, rate=3 * MiB)
    manifest = write_manifest(tmp_path / "m.toml", [{"url": url, "folder": "checkpoints"}])
    store = tmp_path / "content"
    a, b = tmp_path / "a", tmp_path / "b"

    runs = [download(manifest, root, store, {}) for root in (a, b)]
    docs = [finish(p) for p in runs]

    assert fetches(threaded_server, "shared/model.safetensors") == 1
    files = [model_dir(root) / "model.safetensors" for root in (a, b)]
    assert [f.read_bytes() == data for f in files] == [True, True]
    entry = ContentStore(store).object_path(sha(data))
    assert files[0].stat().st_ino == files[1].stat().st_ino == entry.stat().st_ino
    downloaded = sorted(d["files"][0]["downloaded"] for d in docs)
    assert downloaded == [0, len(data)]  # one run fetched it, the other linked it
    assert all(d["files"][0]["status"] == "verified" for d in docs)


def test_a_corrupt_store_entry_is_not_linked_but_downloaded_again(
    tmp_path: Path, threaded_server: ModelServer
) -> None:
    data = blob(3 * MiB, seed=8)
    url = threaded_server.add_hf_file("org/models", "vae/v.safetensors", data)
    env = threaded_server.endpoint_env()  # HF answers X-Linked-Etag: the sha256 is known up front
    manifest = write_manifest(tmp_path / "m.toml", [{"url": url, "folder": "vae"}])
    store = tmp_path / "content"
    finish(download(manifest, tmp_path / "a", store, env))
    entry = ContentStore(store).object_path(sha(data))
    assert fetches(threaded_server, "/cdn/") == 1
    # The same size, other bytes: replaced, not written in place (root a keeps its inode).
    bad = entry.with_name("bad")
    bad.write_bytes(blob(3 * MiB, seed=9))
    os.replace(bad, entry)

    doc = finish(download(manifest, tmp_path / "b", store, env))

    landed = model_dir(tmp_path / "b", "vae") / "v.safetensors"
    assert landed.read_bytes() == data
    assert doc["files"][0]["downloaded"] == len(data)
    assert fetches(threaded_server, "/cdn/") == 2
    assert entry.stat().st_ino == landed.stat().st_ino  # the entry was replaced by good bytes
    assert sha(entry.read_bytes()) == sha(data)


def test_a_model_already_in_the_store_is_linked_without_any_byte_fetched(
    tmp_path: Path, threaded_server: ModelServer
) -> None:
    data = blob(2 * MiB, seed=10)
    url = threaded_server.add_file("x/lora.safetensors", data)
    manifest = write_manifest(
        tmp_path / "m.toml", [{"url": url, "folder": "loras", "sha256": sha(data)}]
    )
    store = tmp_path / "content"
    finish(download(manifest, tmp_path / "a", store, {}))
    assert fetches(threaded_server, "x/lora.safetensors") == 1

    doc = finish(download(manifest, tmp_path / "b", store, {}))

    assert fetches(threaded_server, "x/lora.safetensors") == 1
    assert doc["files"][0] == doc["files"][0] | {"status": "verified", "downloaded": 0}
    link = model_dir(tmp_path / "b", "loras") / "lora.safetensors"
    assert link.stat().st_ino == ContentStore(store).object_path(sha(data)).stat().st_ino


def test_store_paths_come_from_hex_keys_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(ValueError):
        store.object_path("../../etc/passwd")
    with pytest.raises(ValueError):
        store.object_path("A" * 63 + "/")
    assert store.object_path("AB" * 32).parent == tmp_path.resolve() / "sha256" / "ab"
    # a token in the URL does not make another content key; the sha256 wins when known
    assert content_key(None, "https://Host/x?token=1") == content_key(
        None, "https://host/x?token=2"
    )
    assert content_key("ab" * 32, "https://host/x") == "sha256-" + "ab" * 32
    assert content_key("not-hex", "https://host/x").startswith("url-")


def test_a_url_that_now_serves_other_bytes_is_fetched_not_linked_from_the_store(
    tmp_path: Path, threaded_server: ModelServer
) -> None:
    old, new = blob(2 * MiB, seed=11), blob(2 * MiB, seed=12)  # same size, other bytes
    url = threaded_server.add_file("v/model.safetensors", old)
    manifest = write_manifest(tmp_path / "m.toml", [{"url": url, "folder": "checkpoints"}])
    store = tmp_path / "content"
    finish(download(manifest, tmp_path / "a", store, {}))
    threaded_server.add_file("v/model.safetensors", new)  # its ETag changes with the bytes

    doc = finish(download(manifest, tmp_path / "b", store, {}))

    assert (model_dir(tmp_path / "b") / "model.safetensors").read_bytes() == new
    assert doc["files"][0]["sha256"] == sha(new) and doc["files"][0]["downloaded"] == len(new)
    assert (model_dir(tmp_path / "a") / "model.safetensors").read_bytes() == old
