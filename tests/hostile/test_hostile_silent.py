"""Servers that accept a connection and never answer, or never accept at all, fail in seconds
(``[download] connect_timeout`` / ``first_byte_timeout``), through the one retry policy."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.testing.modelserver import Faults, make_safetensors

from .conftest import events, manifest, manifest_toml, run

_register()
QUICK = {"connect_timeout": "1s", "first_byte_timeout": "1s"}


def check_json(tmp_path, models, **download):
    path = manifest_toml(tmp_path / "m.toml", models, **download)
    result = CliRunner().invoke(app, ["check", str(path), "--root", str(tmp_path), "--json"])
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)


def test_check_of_a_silent_server_fails_on_the_first_byte_timeout(tmp_path, silent_server):
    url = f"{silent_server.url}/m.safetensors"
    doc = check_json(tmp_path, [{"url": url, "folder": "loras"}], **QUICK)
    (entry,) = doc["entries"]
    assert entry["status"] == "unreachable"
    assert "no reply within 1s (download.first_byte_timeout)" in entry["message"]
    assert silent_server.accepted == 3  # check's policy: three attempts, no more


def test_check_of_a_host_that_never_accepts_fails_on_the_connect_timeout(
    tmp_path, blackhole_server
):
    url = f"{blackhole_server.url}/m.safetensors"
    doc = check_json(tmp_path, [{"url": url, "folder": "loras"}], **QUICK)
    (entry,) = doc["entries"]
    assert entry["status"] == "unreachable"
    assert "no connection within 1s (download.connect_timeout)" in entry["message"]


async def test_download_from_a_silent_host_gives_up_after_retries_plus_one(tmp_path, silent_server):
    url = f"{silent_server.url}/m.safetensors"
    m = manifest([{"url": url, "folder": "loras"}], retries=1, **QUICK)
    report = await run(m, tmp_path)
    (f,) = report.files
    assert f.status == "failed" and "download.first_byte_timeout" in f.error
    assert silent_server.accepted == 2


async def test_a_silent_cdn_fails_the_ranged_download_within_its_retries(tmp_path, server):
    data = make_safetensors(3 << 20, seed=5)
    url = server.add_hf_file("org/r", "m.safetensors", data, faults=Faults(silent_times=99))
    m = manifest([{"url": url, "folder": "loras"}], retries=2, connections_per_file=1, **QUICK)
    report = await run(m, tmp_path)
    (f,) = report.files
    assert f.status == "failed" and "download.first_byte_timeout" in f.error
    assert len(server.requests_for("/cdn/", "GET")) == 3  # retries + 1, at one layer
    assert [e["kind"] for e in events(tmp_path, "file_failed")] == ["Unreachable"]
