"""The token rule (https, or plain http to loopback only) and Civitai's parallel resolution
(a task group: the probe's error comes out plain, the advisory API never blocks or leaks)."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet import errors
from comfyfleet.manifest import ModelEntry
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources import resolve
from comfyfleet.sources.auth import auth_headers, headers_for_redirect, is_loopback, may_carry_token
from comfyfleet.testing.modelserver import make_safetensors

DATA = make_safetensors(4096, seed=4)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://huggingface.co/x", True),
        ("http://127.0.0.1:8000/x", True),
        ("http://127.8.9.10/x", True),
        ("http://[::1]:9/x", True),
        ("http://localhost/x", True),
        ("http://192.168.1.20:8080/x", False),
        ("http://mirror.lan/x", False),
        ("http://127.0.0.1.evil.example/x", False),
        ("ftp://127.0.0.1/x", False),
    ],
)
def test_may_carry_token(url, ok):
    assert may_carry_token(url) is ok


def test_is_loopback_is_about_addresses_not_names_that_look_like_them():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("127.0.0.1.nip.io") and not is_loopback("10.0.0.1")


def test_a_redirect_to_plain_http_drops_the_token_even_on_the_same_host(monkeypatch):
    headers = {"Authorization": "Bearer x", "User-Agent": "u"}
    assert "Authorization" not in headers_for_redirect(
        "http://mirror.lan/b", "http://mirror.lan/a", headers
    )
    assert headers_for_redirect("https://h/b", "https://h/a", headers) == headers


def test_a_withheld_token_is_noted_once(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.lan:8080")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopq")
    notes: list[str] = []
    for _ in range(3):
        assert "Authorization" not in auth_headers(
            "http://mirror.lan:8080/o/r/resolve/main/f", notes
        )
    assert len(notes) == 1 and "mirror.lan" in notes[0] and "HF_TOKEN" in notes[0]


async def test_civitai_probe_error_comes_out_plain_and_the_slow_api_is_cancelled(server, session):
    url = server.add_civitai(301, DATA, "c.safetensors", token_required=True)
    server.civitai_api_latency = 3600.0  # the API would hold the call for an hour
    with pytest.raises(errors.TokenRequired):  # the probe's error itself, not a group
        await resolve(session, ModelEntry(url=url, folder="loras"))
    assert server.requests_for("/api/v1/model-versions/301")  # it was asked, in parallel
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in others if "version_info" in repr(t.get_coro())]


async def test_a_failing_civitai_api_does_not_fail_the_resolution(server, session):
    url = server.add_civitai(302, DATA, "c.safetensors")
    server.civitai_api_status = 503
    remote = await resolve(
        session, ModelEntry(url=url, folder="loras"), policy=RetryPolicy(retries=0)
    )
    assert remote.filename == "c.safetensors" and remote.sha256 is None  # size check only
