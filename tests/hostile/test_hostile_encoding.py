"""A server that sends a ``Content-Encoding`` despite ``Accept-Encoding: identity`` is refused,
by name, in ``check`` and in downloads: compressed bytes are never called verified."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.testing.modelserver import Faults, make_safetensors

from .conftest import events, manifest, manifest_toml, run

_register()
DATA = make_safetensors(3 << 20, seed=9)


async def test_a_gzip_cdn_fails_the_download_naming_the_server(tmp_path, server):
    url = server.add_hf_file("org/r", "m.bin", DATA, faults=Faults(content_coding="gzip"))
    m = manifest([{"url": url, "folder": "loras"}], retries=3, connections_per_file=1)
    report = await run(m, tmp_path)
    (f,) = report.files
    assert f.status == "failed"
    assert f"127.0.0.1:{server.cdn_port}" in f.error and "Content-Encoding: gzip" in f.error
    assert not (tmp_path / "ComfyUI" / "models" / "loras" / "m.bin").exists()
    assert len(server.requests_for("/cdn/", "GET")) == 1  # refused, not retried
    assert [e["kind"] for e in events(tmp_path, "file_failed")] == ["NotAModel"]
    verified = tmp_path / ".comfyfleet" / "verified.json"
    assert not verified.exists() or "m.bin" not in verified.read_text()


async def test_a_gzip_plain_host_fails_without_a_sha256_too(tmp_path, server):
    # No sha256 and not a .safetensors: before, nothing but the coding check stood in the way.
    url = server.add_file("g/m.bin", DATA, faults=Faults(content_coding="gzip"))
    report = await run(manifest([{"url": url, "folder": "loras"}]), tmp_path)
    assert report.files[0].status == "failed"
    assert "Content-Encoding: gzip" in report.files[0].error
    assert not (tmp_path / "ComfyUI" / "models" / "loras" / "m.bin").exists()


def test_check_reports_a_content_coding_as_not_a_model(tmp_path, server):
    url = server.add_file("c/m.bin", DATA, faults=Faults(content_coding="gzip"))
    path = manifest_toml(tmp_path / "m.toml", [{"url": url, "folder": "loras"}])
    result = CliRunner().invoke(app, ["check", str(path), "--root", str(tmp_path), "--json"])
    assert result.exit_code == 1
    (entry,) = json.loads(result.stdout)["entries"]
    assert entry["status"] == "not_a_model"
    assert f"127.0.0.1:{server.port}" in entry["message"]
    assert "Content-Encoding: gzip" in entry["message"]
