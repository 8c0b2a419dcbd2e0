"""No token ever appears in check's output, its --json document, or any exception text."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from typer.testing import CliRunner

from comfyfleet import errors
from comfyfleet.cli import _register, app
from comfyfleet.manifest import ModelEntry
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources import resolve
from comfyfleet.testing.modelserver import Faults, ModelServer, make_safetensors

_register()

HF = "hf_SuperSecretToken0123456789"
CIV = "civitai-secret-token-ABCDEF987"
SECRETS = (HF, CIV)


@pytest.fixture
def server(server, monkeypatch):
    """The shared model server, with both tokens set."""
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("CIVITAI_TOKEN", CIV)
    return server


def urls(srv: ModelServer) -> list[str]:
    data = make_safetensors(1024)
    return [
        srv.add_hf_file("org/ok", "ok.safetensors", data),
        srv.add_hf_file("org/gated", "g.safetensors", data, gated=True),  # token without grant
        f"{srv.base_url}/org/ok/resolve/main/missing.safetensors",
        srv.add_civitai(1, data, "c.safetensors", token_required=True, valid_tokens=("other",)),
        srv.add_civitai(2, data, "d.safetensors", token_required=True),
        # a user who pasted the token into the URL, as legacy scripts did
        f"{srv.base_url}/api/download/models/2?token={CIV}",
        f"{srv.base_url}/api/download/models/404?token={CIV}",
        srv.add_file("page.bin", b"<html>", html=True),
        srv.add_file("down.bin", data, faults=Faults(statuses=[(503, None)] * 9)),
        f"http://user:{HF}@127.0.0.1:1/x.safetensors",
    ]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("json_flag", [True, False])
def test_check_output_never_contains_a_token(server, tmp_path, json_flag, caplog):
    caplog.set_level(logging.DEBUG)
    manifest = tmp_path / "m.toml"
    body = "version = 1\n" + "".join(
        f'[[models]]\nurl = {json.dumps(u)}\nfolder = "loras"\nfilename = "f{i}.safetensors"\n'
        for i, u in enumerate(urls(server))
    )
    manifest.write_text(body)
    args = ["check", str(manifest), "--root", str(tmp_path)] + (["--json"] if json_flag else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert_clean(result.stdout)
    assert_clean(result.stderr)
    assert_clean(caplog.text)
    if json_flag:
        statuses = {e["status"] for e in json.loads(result.stdout)["entries"]}
        assert {"ok", "gated_no_access", "not_found", "civitai_token_required"} <= statuses
    # the tokens were really sent (to their own hosts only), so the test means something
    sent = [r.headers.get("Authorization", "") for r in server.requests]
    assert f"Bearer {HF}" in sent and f"Bearer {CIV}" in sent


async def test_exceptions_never_contain_a_token(server):
    async with aiohttp.ClientSession() as session:
        for url in urls(server):
            try:
                remote = await resolve(
                    session, ModelEntry(url=url, folder="loras"), policy=RetryPolicy(retries=0)
                )
            except errors.SourceError as exc:
                assert_clean(str(exc))
                assert_clean(repr(exc))
                assert_clean(exc.hint)
            else:
                assert_clean(remote.fetch_url)
