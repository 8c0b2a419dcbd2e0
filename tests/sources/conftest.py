"""A running model server with the hub and Civitai endpoints pointed at it; no tokens set."""

from __future__ import annotations

import pytest

from comfyfleet.testing.modelserver import ModelServer

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")


@pytest.fixture
async def server(monkeypatch):
    async with ModelServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        monkeypatch.setenv("CIVITAI_ENDPOINT", srv.base_url)
        for var in TOKEN_VARS:
            monkeypatch.delenv(var, raising=False)
        yield srv


@pytest.fixture
async def session():
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s
