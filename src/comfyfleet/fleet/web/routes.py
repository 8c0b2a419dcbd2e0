"""The dashboard's routes: the page, login/logout, the SSE stream and the static files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sse_starlette.sse import EventSourceResponse

from comfyfleet.fleet.store import Store
from comfyfleet.fleet.web.auth import (
    COOKIE,
    cookie_operator,
    csrf_token,
    same_origin,
    token_matches,
)
from comfyfleet.fleet.web.hub import Hub
from comfyfleet.fleet.web.sources import FileLogs, LogSource, StoreLogs

HERE = Path(__file__).parent
#: the only files served under /ui/static/ (a fixed list: no path from the request is opened)
STATIC = {"dash.js": "text/javascript", "dash.css": "text/css"}
#: what the page may load: itself only (no CDN, no inline script)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: the longest login body read (a token, not an upload)
MAX_LOGIN = 4096


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        # not no-referrer: with it Chromium sends "Origin: null", and login checks the Origin
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


class Dashboard:
    """The dashboard of one pool: its templates, its hub and its routes."""

    def __init__(self, store: Store, source: LogSource, *, token: str, pool: str) -> None:
        self.token = token
        self.pool = pool
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.parts = self.env.get_template("_parts.html").module
        self.hub = Hub(store, source, self.parts, pool=pool)
        self.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
        self.router = self._routes()

    def _login(self, error: str = "", status: int = 200) -> HTMLResponse:
        html = self.env.get_template("login.html").render(pool=self.pool, error=error)
        return HTMLResponse(html, status_code=status, headers=_headers())

    def _routes(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)

        @r.get("/", response_class=HTMLResponse)
        async def page(request: Request) -> Response:
            if not cookie_operator(request, self.token):
                return self._login()
            await self.hub.update()
            html = self.env.get_template("page.html").render(
                pool=self.pool,
                csrf=csrf_token(self.token),
                items=self.hub.items(),
                version=self.hub.version,
                totals_html=self.hub.totals_html(),
            )
            return HTMLResponse(html, headers=_headers())

        @r.post("/login")
        async def login(request: Request) -> Response:
            if not same_origin(request):
                return self._login("this sign-in came from another site", 403)
            body = await request.body()
            if len(body) > MAX_LOGIN:
                return self._login("the token is too long", 400)
            given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
            if not token_matches(given, self.token):
                return self._login("wrong token: use COMFYFLEET_API_TOKEN of pool serve", 401)
            resp = RedirectResponse("/", status_code=303, headers=_headers())
            resp.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
            return resp

        @r.post("/logout")
        async def logout(request: Request) -> Response:
            body = parse_qs((await request.body())[:MAX_LOGIN].decode("utf-8", "replace"))
            if not same_origin(request) or body.get("csrf", [""])[0] != csrf_token(self.token):
                return self._login("sign-out refused (a stale page?)", 403)
            resp = RedirectResponse("/", status_code=303, headers=_headers())
            resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return resp

        @r.get("/ui/events")
        async def events(request: Request) -> Response:
            if not cookie_operator(request, self.token):
                return Response(status_code=401, headers=_headers())
            since = request.query_params.get("since", "")
            version = int(since) if since.isdigit() and len(since) < 12 else None
            return EventSourceResponse(self._stream(version), ping=15, headers=_headers())

        @r.get("/ui/static/{name}")
        async def static(name: str) -> Response:
            if name not in STATIC:
                return Response(status_code=404)
            return Response(
                self.static[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"}
            )

        return r

    async def _stream(self, since: int | None) -> AsyncIterator[dict[str, str]]:
        q = self.hub.subscribe(since)
        try:
            while True:
                message = await q.get()
                if not message:  # fell behind: end the stream, EventSource reconnects and resyncs
                    return
                yield {"event": "swap", "data": message}
        except asyncio.CancelledError:
            raise
        finally:
            self.hub.unsubscribe(q)


def install(app: FastAPI, dashboard: Dashboard) -> None:
    """Serve ``dashboard`` at ``/`` of ``app`` (the lease API's app)."""
    app.include_router(dashboard.router)
    app.state.dashboard = dashboard


def mount(app: FastAPI, ctx: Any) -> Dashboard:
    """The dashboard of the lease API's context (its store, operator token and, for local
    pools, ``ctx.local_base`` for the slots' status files), served on ``app``."""
    local_base = getattr(ctx, "local_base", None)
    files = FileLogs(local_base=Path(local_base)) if local_base else None
    source = StoreLogs(ctx.store, files=files)
    dashboard = Dashboard(ctx.store, source, token=ctx.operator_token, pool=ctx.store.pool)
    install(app, dashboard)
    return dashboard
