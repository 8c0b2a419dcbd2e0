"""Blocking file work runs in threads, never on the event loop that drives every download."""

from __future__ import annotations

import errno
import os
import threading

from .conftest import blob, manifest, model_dir, run, sha


async def test_fallocate_fsync_and_the_copy_fallback_run_off_the_loop(
    server, tmp_path, monkeypatch
):
    loop_thread = threading.current_thread()
    calls: dict[str, list[bool]] = {"posix_fallocate": [], "fsync": [], "copy": []}

    def spy(name, real):
        def wrapper(*args, **kwargs):
            calls[name].append(threading.current_thread() is loop_thread)
            return real(*args, **kwargs)

        return wrapper

    def no_hard_links(src, dst, *a, **kw):
        # A filesystem without hard links (or another device): the engine must copy.
        calls["copy"].append(threading.current_thread() is loop_thread)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "posix_fallocate", spy("posix_fallocate", os.posix_fallocate))
    monkeypatch.setattr(os, "fsync", spy("fsync", os.fsync))
    monkeypatch.setattr(os, "link", no_hard_links)
    data = blob(2_000_000, 60)
    url = server.add_file("t.safetensors", data)
    m = manifest([{"url": url, "folder": "unet", "sha256": sha(data)},
                  {"url": url, "folder": "diffusion_models"}])  # fmt: skip

    report = await run(m, tmp_path)

    assert report.ok and [f.status for f in report.files] == ["verified", "verified"]
    a = model_dir(tmp_path, "unet") / "t.safetensors"
    b = model_dir(tmp_path, "diffusion_models") / "t.safetensors"
    assert b.read_bytes() == data and os.stat(a).st_ino != os.stat(b).st_ino  # a real copy
    for name, on_loop in calls.items():
        assert on_loop, f"{name} was never called"
        assert not any(on_loop), f"{name} ran on the event loop"
