"""A running model server with the hub and Civitai endpoints pointed at it; no tokens set."""

from __future__ import annotations

import pytest

from comfyfleet.testing.modelserver import ModelServer


@pytest.fixture
async def server(point_sources_at):
    """The model server in the test's own event loop (these tests are async)."""
    async with ModelServer() as srv:
        point_sources_at(srv)
        yield srv


@pytest.fixture
async def session():
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s
