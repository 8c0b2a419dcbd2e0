"""A model server in a background thread (the CLI runs its own event loop), endpoints set."""

from __future__ import annotations

import pytest

from comfyfleet.testing.modelserver import ModelServer

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")


@pytest.fixture
def server(monkeypatch):
    srv = ModelServer()
    srv.start_in_thread()
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    monkeypatch.setenv("CIVITAI_ENDPOINT", srv.base_url)
    for var in TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    try:
        yield srv
    finally:
        srv.stop_thread()
