"""No token over plain http except to loopback: hub URLs are upgraded to https, any other
plain-http host (a LAN ``HF_ENDPOINT`` mirror included) gets no token and one warning."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.sources import auth_headers, effective_url
from comfyfleet.testing.modelserver import ModelServer, make_safetensors

from .conftest import NOT_LOOPBACK_BY_NAME, manifest, manifest_toml, run, state_files

_register()
HF = "hf_PlainHttpMustNotSee0123"
CIV = "civitai-plain-http-secret-77"


@pytest.fixture
def lan_server(point_sources_at, monkeypatch):
    """The model server as a "LAN mirror" (a non-loopback host name), the HF/Civitai endpoints."""
    srv = ModelServer(url_host=NOT_LOOPBACK_BY_NAME)
    srv.start_in_thread()
    point_sources_at(srv)
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("CIVITAI_TOKEN", CIV)
    try:
        yield srv
    finally:
        srv.stop_thread()


@pytest.mark.parametrize(
    ("url", "upgraded"),
    [
        ("http://huggingface.co/o/r/resolve/main/m.safetensors",
         "https://huggingface.co/o/r/resolve/main/m.safetensors"),
        ("http://hf.co:80/o/r/resolve/main/m.safetensors",
         "https://hf.co/o/r/resolve/main/m.safetensors"),
        ("http://civitai.com/api/download/models/12?type=Model",
         "https://civitai.com/api/download/models/12?type=Model"),
        ("http://civitai.com/api/v1/model-versions/12", "https://civitai.com/api/v1/model-versions/12"),
    ],
)  # fmt: skip
def test_plain_http_hub_urls_are_upgraded_to_https(url, upgraded, monkeypatch):
    for var in ("HF_ENDPOINT", "CIVITAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("CIVITAI_TOKEN", CIV)
    assert effective_url(url) == upgraded
    assert "Authorization" not in auth_headers(url)  # the plain URL itself never gets one
    assert auth_headers(upgraded)["Authorization"].startswith("Bearer ")


def test_a_lan_mirror_over_http_gets_no_token_and_one_warning(lan_server, tmp_path):
    data = make_safetensors(2048)
    urls = [
        lan_server.add_hf_file("org/gated", f"m{i}.safetensors", data, gated=True,
                               granted_tokens=(HF,))
        for i in range(3)
    ] + [lan_server.add_civitai(7, data, "c.safetensors", token_required=True)]  # fmt: skip
    path = manifest_toml(tmp_path / "m.toml", [{"url": u, "folder": "loras"} for u in urls])
    result = CliRunner().invoke(app, ["check", str(path), "--root", str(tmp_path), "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [e["status"] for e in doc["entries"]] == ["gated_no_token"] * 3 + [
        "civitai_token_required"
    ]
    host = lan_server.url_host
    notes = [w for w in doc["warnings"] if "not sent to" in w]
    assert notes == [
        f"HF_TOKEN not sent to {host}: the URL is plain http:// (a token goes only over https, "
        "or to a loopback address); gated or private files there will fail",
        f"CIVITAI_TOKEN not sent to {host}: the URL is plain http:// (a token goes only over "
        "https, or to a loopback address); gated or private files there will fail",
    ]
    assert lan_server.requests and all(
        "Authorization" not in r.headers for r in lan_server.requests
    )
    assert HF not in result.stdout + result.stderr and CIV not in result.stdout + result.stderr


async def test_a_download_from_a_lan_mirror_warns_once_per_host(lan_server, tmp_path):
    data = make_safetensors(2048)
    urls = [lan_server.add_hf_file("org/open", f"m{i}.safetensors", data) for i in range(3)]
    report = await run(manifest([{"url": u, "folder": "loras"} for u in urls]), tmp_path)
    assert report.ok  # public files still download: only the token is withheld
    log = state_files(tmp_path)["provision.log"]
    assert log.count(f"HF_TOKEN not sent to {lan_server.url_host}") == 1
    assert all("Authorization" not in r.headers for r in lan_server.requests)


async def test_loopback_over_http_still_gets_its_token(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    data = make_safetensors(2048)
    url = server.add_hf_file("org/g", "m.safetensors", data, gated=True, granted_tokens=(HF,))
    report = await run(manifest([{"url": url, "folder": "loras"}]), tmp_path)
    assert report.ok
    hub = [r for r in server.requests if "/resolve/" in r.path]
    assert hub and all(r.headers.get("Authorization") == f"Bearer {HF}" for r in hub)
    assert "not sent to" not in state_files(tmp_path)["provision.log"]
