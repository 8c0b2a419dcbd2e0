"""Auth: 401 for a missing or wrong token on every route but /healthz; lease tokens reach
only their own lease; the OpenAPI document is served behind the token and is valid."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from comfyfleet.fleet.api import create_app

from .conftest import TOKEN, make_ready

PUBLIC = {"/healthz"}


def _routes(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        # the dashboard's routes (its login page is public) are tested in tests/fleet_web
        if not isinstance(route, APIRoute) or route.endpoint.__module__ != "comfyfleet.fleet.api":
            continue
        path = re.sub(r"\{[^}]+\}", "abc123", route.path)
        for method in route.methods:
            found.append((method, path))
    return found


async def test_every_route_but_healthz_answers_401_without_the_right_token(start_api, sqlite_url):
    api = await start_api(sqlite_url)
    routes = [(m, p) for m, p in _routes(create_app(api.ctx)) if p not in PUBLIC]
    assert ("POST", "/v1/leases") in routes and ("GET", "/openapi.json") in routes
    assert len(routes) >= 9
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"},
                        {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
            async with api.http.request(method, api.url + path, headers=headers, json={}) as r:
                assert r.status == 401, (method, path, headers, r.status)
                assert r.headers.get("WWW-Authenticate") == "Bearer"
    async with api.http.get(api.url + "/healthz") as r:
        assert r.status == 200 and (await r.json())["ok"] is True
    # with the token, the same routes are past auth (never 401)
    for method, path in routes:
        async with api.http.request(method, api.url + path, headers=api.auth(), json={}) as r:
            assert r.status != 401, (method, path)


async def test_a_lease_token_renews_and_releases_only_its_own_lease(start_api, store_url):
    api = await start_api(store_url)
    await make_ready(api.store, 2, ctx=api.ctx)
    _, a = await api.lease()
    _, b = await api.lease()
    mine = {"Authorization": f"Bearer {a['lease_token']}"}
    # not another lease, not the operator's routes
    async with api.http.post(f"{api.url}/v1/leases/{b['lease_id']}/renew", headers=mine) as r:
        assert r.status == 401
    async with api.http.delete(f"{api.url}/v1/leases/{b['lease_id']}", headers=mine) as r:
        assert r.status == 401
    for method, path in [("GET", "/v1/instances"), ("POST", "/v1/leases"),
                         ("GET", f"/v1/leases/{a['lease_id']}"), ("GET", "/metrics")]:  # fmt: skip
        async with api.http.request(method, api.url + path, headers=mine, json={}) as r:
            assert r.status == 401, path
    # its own: renew, then release
    async with api.http.post(f"{api.url}/v1/leases/{a['lease_id']}/renew", headers=mine) as r:
        assert r.status == 200 and (await r.json())["state"] == "active"
    async with api.http.delete(f"{api.url}/v1/leases/{a['lease_id']}", headers=mine) as r:
        assert r.status == 200 and (await r.json())["state"] == "released"
    assert [row for row, _ in api.released] == [a["instance_id"]]
    async with api.http.get(f"{api.url}/v1/leases/{b['lease_id']}", headers=api.auth()) as r:
        assert (await r.json())["state"] == "active"


async def test_openapi_is_served_with_the_token_and_valid(start_api, sqlite_url):
    api = await start_api(sqlite_url)
    async with api.http.get(api.url + "/openapi.json") as r:
        assert r.status == 401
    for path in ("/docs", "/redoc"):  # the CDN-loading docs are off
        async with api.http.get(api.url + path, headers=api.auth()) as r:
            assert r.status in (401, 404) and "cdn" not in (await r.text()).lower()
    async with api.http.get(api.url + "/openapi.json", headers=api.auth()) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    expected = [
        ("/v1/leases", "post"), ("/v1/leases/{lease_id}", "get"),
        ("/v1/leases/{lease_id}/renew", "post"), ("/v1/leases/{lease_id}", "delete"),
        ("/v1/instances", "get"), ("/v1/instances/{instance_id}", "delete"),
        ("/v1/instances/{instance_id}/log", "get"), ("/healthz", "get"), ("/metrics", "get"),
    ]  # fmt: skip
    for path, method in expected:
        assert method in paths[path], (path, method)
    body = doc["components"]["schemas"]["LeaseRequest"]
    assert set(body["properties"]) == {"wait_s", "instance_id"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # every $ref resolves inside the document
    text = str(doc)
    for ref in re.findall(r"'\$ref': '#/components/schemas/([^']+)'", text):
        assert ref in doc["components"]["schemas"], ref
