"""The lease API (FastAPI, served by uvicorn inside ``pool serve``).

Two bearer tokens, both compared in constant time: the operator's (``COMFYFLEET_API_TOKEN``,
everything) and each lease's own (renew and release of that lease only). A missing or wrong
token is 401 everywhere but ``/healthz``; the OpenAPI document needs the operator token and
the interactive docs (which load their script from a CDN) are off.

``create_app(ctx)`` builds the app; the dashboard mounts its routes on it and reuses
:func:`require_operator`. ``serve_api(ctx, listen)`` runs it (plus the lease-expiry sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from comfyfleet.errors import UsageError
from comfyfleet.fleet import leases
from comfyfleet.fleet.keys import (
    KeyInstaller,
    LeaseKeyError,
    SshKeyInstaller,
    attach_standby_key,
    remove_lease_key,
)
from comfyfleet.fleet.metrics import CONTENT_TYPE, FleetMetrics, default_metrics
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import InstanceRow, Store
from comfyfleet.names import escape_controls

TOKEN_ENV = "COMFYFLEET_API_TOKEN"
#: how often waiters look for instances made ready elsewhere (another process or replica)
POLL_S = 0.25
#: a lazy key attach that failed is retried after this long
ATTACH_RETRY_S = 30.0
#: most leases taken in one store transaction (requests that arrive together)
BATCH_MAX = 64
ID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@dataclass
class ApiContext:
    """What the API works on: the store, the tokens, how keys reach instances, the hooks.

    ``on_release(row_id, reason)``: runs the pool's release flow for an instance now in
    ``releasing``; ``destroy(row_id, reason)``: the operator's destroy of one instance.
    """

    store: Store
    operator_token: str
    lease_ttl: float
    keys: KeyInstaller
    #: the port ComfyUI listens on for the row (sync, or async: read from the store)
    comfyui_port: Callable[[InstanceRow], int | Awaitable[int]] = lambda row: 8188
    local_url: Callable[[InstanceRow], str | None] = lambda row: None
    on_release: Callable[[str, str], Awaitable[None]] | None = None
    destroy: Callable[[str, str], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.time
    log: Callable[[str], None] = lambda line: None
    metrics: FleetMetrics = field(default_factory=FleetMetrics)
    sweep_interval: float = 1.0
    #: whether this process attaches standby keys to ready instances in the background (the
    #: leading replica only, so two replicas never add two lines to one instance)
    attaches_keys: Callable[[], bool] = lambda: False
    broker: LeaseBroker = field(init=False)

    def __post_init__(self) -> None:
        self.broker = LeaseBroker(self)


def operator_token_from_env() -> str:
    """``COMFYFLEET_API_TOKEN``, or exit 2 (``pool serve`` refuses to start without it)."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise UsageError(
            f"{TOKEN_ENV} is not set: the lease API needs an operator token",
            hint=f"export {TOKEN_ENV}=$(openssl rand -hex 32) before pool serve and its clients",
        )
    return token.strip()


# --- the lease broker: one FIFO of waiters per process ------------------------------------


@dataclass(eq=False)
class _Waiter:
    instance_id: str | None
    future: asyncio.Future[leases.Taken]
    started: float
    in_flight: bool = False
    gone: bool = False


class LeaseBroker:
    """Serves lease requests first-come first-served as instances become ready."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.waiters: deque[_Waiter] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._attach_failed: dict[str, float] = {}
        self._batch: list[asyncio.Future[leases.Taken | None]] = []
        self._batcher: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """An instance may have become ready: look again now."""
        self._wake.set()

    def _take_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        # SQLite has one writer: queue takes here instead of at the file lock. PostgreSQL
        # takes run concurrently (SKIP LOCKED), as they do across replicas.
        if leases.engine_of(self.ctx.store).dialect.name != "sqlite":
            return contextlib.nullcontext()
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _take(self, instance_id: str | None) -> leases.Taken | None:
        if instance_id is not None:
            async with self._take_lock():
                return await leases.take(
                    self.ctx.store, ttl=self.ctx.lease_ttl, now=self.ctx.clock(),
                    instance_id=instance_id,
                )  # fmt: skip
        # any instance: requests that arrive while a take commits share the next one
        future: asyncio.Future[leases.Taken | None] = asyncio.get_running_loop().create_future()
        self._batch.append(future)
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.get_running_loop().create_task(self._take_batches())
        return await future

    async def _take_batches(self) -> None:
        while self._batch:
            batch, self._batch = self._batch[:BATCH_MAX], self._batch[BATCH_MAX:]
            try:
                async with self._take_lock():
                    got = await leases.take_many(
                        self.ctx.store, len(batch), ttl=self.ctx.lease_ttl, now=self.ctx.clock()
                    )
            except Exception as exc:
                for future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for i, future in enumerate(batch):
                taken = got[i] if i < len(got) else None
                if not future.done():
                    future.set_result(taken)
                elif taken is not None:  # its request went away: the lease lapses unrenewed
                    self.ctx.log(f"lease {taken.lease.id}: its request went away")

    async def _take_or_attach(self, instance_id: str | None) -> leases.Taken | None:
        taken = await self._take(instance_id)
        if taken is None and await self._attach_missing():
            taken = await self._take(instance_id)
        return taken

    async def _attach_missing(self) -> bool:
        """Attach standby keys to ready instances that have none (until the provisioning
        flow attaches them itself when it sets ready); True when one was attached."""
        now = time.monotonic()
        attached = False
        for row_id in await leases.ready_without_key(self.ctx.store):
            if now - self._attach_failed.get(row_id, -ATTACH_RETRY_S) < ATTACH_RETRY_S:
                continue
            row = await self.ctx.store.get(row_id)
            if row is None or row.state is not State.READY:
                continue
            try:
                await attach_standby_key(self.ctx, row)
                attached = True
            except LeaseKeyError as exc:
                self._attach_failed[row_id] = now
                self.ctx.log(f"{row_id}: no lease key attached: {exc}")
        return attached

    async def lease(self, wait_s: float, instance_id: str | None) -> leases.Taken | int:
        """A lease, or the request's queue position when none came within ``wait_s``."""
        started = time.monotonic()
        if not self.waiters:
            taken = await self._take_or_attach(instance_id)
            if taken is not None:
                self._observe(started, "leased")
                return taken
            if wait_s <= 0:
                self._observe(None, "timeout")
                return 1
        elif wait_s <= 0:
            self._observe(None, "timeout")
            return len(self.waiters) + 1
        waiter = _Waiter(instance_id, asyncio.get_running_loop().create_future(), started)
        self.waiters.append(waiter)
        self._ensure_dispatcher()
        self.wake()
        await asyncio.wait({waiter.future}, timeout=wait_s)
        if not waiter.future.done() and waiter.in_flight:
            await asyncio.wait({waiter.future})  # a take is under way for it: its outcome
        if waiter.future.done():
            self._observe(started, "leased")
            return waiter.future.result()
        position = self.waiters.index(waiter) + 1 if waiter in self.waiters else 1
        waiter.gone = True
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)
        self._observe(None, "timeout")
        return position

    def _observe(self, started: float | None, outcome: str) -> None:
        self.ctx.metrics.leases.labels(outcome=outcome).inc()
        if started is not None:
            self.ctx.metrics.lease_wait.observe(time.monotonic() - started)

    def _ensure_dispatcher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        while self.waiters:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()
            try:
                await self._serve_waiters()
            except Exception as exc:  # the store failed: waiters keep waiting, we retry
                self.ctx.log(f"lease broker: {type(exc).__name__}: {exc}")

    async def _serve_waiters(self) -> None:
        general_exhausted = False
        for waiter in list(self.waiters):
            if waiter.gone or waiter.future.done():
                continue
            if general_exhausted and waiter.instance_id is None:
                continue
            waiter.in_flight = True
            try:
                taken = await self._take_or_attach(waiter.instance_id)
            except BaseException as exc:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
                raise
            finally:
                waiter.in_flight = False
            if taken is None:
                general_exhausted = general_exhausted or waiter.instance_id is None
                continue
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            waiter.future.set_result(taken)

    async def aclose(self) -> None:
        """Stop the dispatcher."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --- auth --------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="COMFYFLEET_API_TOKEN, or a lease_token")


def _unauthorized() -> HTTPException:
    return HTTPException(
        401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


def _context(request: Request) -> ApiContext:
    return request.app.state.ctx


def _is_operator(ctx: ApiContext, creds: HTTPAuthorizationCredentials | None) -> bool:
    if creds is None or creds.scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(creds.credentials.encode(), ctx.operator_token.encode())


async def require_operator(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiContext:
    """FastAPI dependency: the operator's bearer token (401 otherwise); gives the context."""
    ctx = _context(request)
    if not (_is_operator(ctx, creds) or _dashboard_cookie(request, ctx)):
        raise _unauthorized()
    return ctx


def _dashboard_cookie(request: Request, ctx: ApiContext) -> bool:  # (wave2: fleet-dashboard)
    """The dashboard's HttpOnly token cookie (+ its CSRF header on a state change)."""
    from comfyfleet.fleet.web.auth import cookie_operator

    return cookie_operator(request, ctx.operator_token)


@dataclass(frozen=True)
class _LeaseAccess:
    ctx: ApiContext
    lease: leases.Lease


async def _operator_or_lease(
    request: Request,
    lease_id: ID,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> _LeaseAccess:
    ctx = _context(request)
    # (wave2: fleet-dashboard) the dashboard's cookie counts as the operator's token
    operator = _is_operator(ctx, creds) or _dashboard_cookie(request, ctx)
    if creds is None and not operator:
        raise _unauthorized()
    found = await leases.get(ctx.store, lease_id)
    if found is not None and (operator or leases.token_matches(creds.credentials, found[1])):  # type: ignore[union-attr]
        return _LeaseAccess(ctx, found[0])
    if operator:
        raise HTTPException(404, f"no lease {lease_id} in this pool")
    raise _unauthorized()  # a lease token never learns whether another lease exists


Operator = Annotated[ApiContext, Depends(require_operator)]
LeaseAccess = Annotated[_LeaseAccess, Depends(_operator_or_lease)]


# --- bodies ------------------------------------------------------------------------------


class LeaseRequest(BaseModel):
    """``POST /v1/leases``."""

    model_config = ConfigDict(extra="forbid")
    wait_s: float = Field(0.0, ge=0, le=3600, description="How long to wait for a ready instance")
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def lease_document(
    ctx: ApiContext, lease: leases.Lease, row: InstanceRow | None
) -> dict[str, Any]:
    """A lease as the API shows it (without its token and key)."""
    doc: dict[str, Any] = {
        "lease_id": lease.id,
        "instance_id": lease.instance_id,
        "state": lease.state,
        "expires_at": _iso(lease.expires_at),
        "expires_in_s": round(lease.expires_at - ctx.clock(), 1),
    }
    if lease.ended_reason:
        doc["ended_reason"] = lease.ended_reason
    if row is None:
        return doc
    url = ctx.local_url(row) if row.provider_kind == "local" else None
    if url is not None:
        doc["url"] = url
    elif row.ssh_host:
        port = ctx.comfyui_port(row)
        if inspect.isawaitable(port):
            port = await port
        doc["ssh"] = {"host": row.ssh_host, "port": row.ssh_port, "user": row.ssh_user}
        doc["tunnel"] = (
            f"ssh -N -L {port}:127.0.0.1:{port} -i lease-{lease.id}.key "
            f"-p {row.ssh_port} {row.ssh_user}@{row.ssh_host}"
        )
    return doc


async def release(
    ctx: ApiContext, lease_id: str, *, reason: str, state: str = "released"
) -> leases.Lease | None:
    """End a lease: the store first (lease ended, instance ``releasing``), then remove its
    key from the instance, then hand the instance to the release flow."""
    lease = await leases.end(ctx.store, lease_id, now=ctx.clock(), reason=reason, state=state)
    if lease is None:
        return None
    row = await ctx.store.get(lease.instance_id)
    if row is not None:
        try:
            await remove_lease_key(ctx, row, lease.id)
        except Exception as exc:  # the lease has ended in the store; the flow runs regardless
            ctx.log(f"{row.id}: lease key not removed ({exc}); the release flow still runs")
        if ctx.on_release is not None:
            await ctx.on_release(row.id, reason)
    ctx.log(f"lease {lease.id} on {lease.instance_id} ended: {reason}")
    return lease


async def expire_due(ctx: ApiContext) -> int:
    """Release every lease not renewed within ``lease_ttl``; how many."""
    n = 0
    for lease in await leases.due(ctx.store, ctx.clock()):
        if await release(
            ctx, lease.id, reason="expired: not renewed within lease_ttl", state="expired"
        ):
            n += 1
    return n


def _logstore() -> Any:
    """fleet-provisioning's log store module, when it is there."""
    try:
        from comfyfleet.fleet import logstore  # type: ignore[attr-defined]
    except ImportError:
        return None
    return logstore


async def _call(module: Any, name: str, *args: Any, **kw: Any) -> Any:
    fn = getattr(module, name, None) if module is not None else None
    if fn is None:
        return None
    result = fn(*args, **kw)
    return await result if asyncio.iscoroutine(result) else result


async def instance_document(
    ctx: ApiContext, row: InstanceRow, lease_of: dict[str, str]
) -> dict[str, Any]:
    """One entry of ``GET /v1/instances``."""
    logstore = _logstore()
    progress = await _call(logstore, "instance_progress", ctx.store, row.id)
    tail = await _call(logstore, "log_tail", ctx.store, row.id)

    def pget(key: str) -> Any:
        if progress is None:
            return None
        return progress.get(key) if isinstance(progress, dict) else getattr(progress, key, None)

    return {
        "id": row.id,
        "provider": row.provider_kind,
        "provider_id": row.provider_id,
        "state": row.state.value,
        "phase": pget("phase"),
        "bytes_done": pget("bytes_done"),
        "bytes_total": pget("bytes_total"),
        "speed": pget("speed"),
        "gpu": row.gpu_name,
        "dph": row.dph,
        "age_s": round(ctx.clock() - row.created_at, 1),
        "lease_id": lease_of.get(row.id) or (row.lease_id if row.state is State.LEASED else None),
        "log_tail": [escape_controls(str(line)) for line in (tail or [])],
    }


# --- the app -----------------------------------------------------------------------------


def create_app(ctx: ApiContext) -> FastAPI:
    """The lease API app over ``ctx`` (the dashboard adds its routes to it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ctx.broker.aclose()

    app = FastAPI(
        title="comfyfleet lease API",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: off
        redoc_url=None,
        openapi_url=None,  # served below, behind the operator token
        lifespan=lifespan,
    )
    app.state.ctx = ctx

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: Operator) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/healthz", tags=["public"])
    async def healthz() -> dict[str, Any]:
        """Liveness (public): the process answers."""
        return {"ok": True, "pool": ctx.store.pool}

    @app.post("/v1/leases", status_code=201, tags=["leases"])
    async def create_lease(body: LeaseRequest, ctx: Operator) -> Any:
        """Lease a ready instance, waiting up to ``wait_s`` (503 with the queue position)."""
        if body.instance_id is not None:
            row = await ctx.store.get(body.instance_id)
            if row is None or row.pool != ctx.store.pool:
                raise HTTPException(404, f"no instance {body.instance_id} in this pool")
        got = await ctx.broker.lease(body.wait_s, body.instance_id)
        if isinstance(got, int):
            return JSONResponse(
                {"detail": f"no instance became ready within {body.wait_s:g}s",
                 "queue_position": got},
                status_code=503, headers={"Retry-After": "5"},
            )  # fmt: skip
        doc = {"lease_token": got.token, **(await lease_document(ctx, got.lease, got.row))}
        if "ssh" in doc:
            doc["private_key"] = got.private_key
        return doc

    @app.get("/v1/leases/{lease_id}", tags=["leases"])
    async def get_lease(lease_id: ID, ctx: Operator) -> dict[str, Any]:
        """One lease (operator)."""
        found = await leases.get(ctx.store, lease_id)
        if found is None:
            raise HTTPException(404, f"no lease {lease_id} in this pool")
        return await lease_document(ctx, found[0], await ctx.store.get(found[0].instance_id))

    @app.post("/v1/leases/{lease_id}/renew", tags=["leases"])
    async def renew_lease(access: LeaseAccess) -> dict[str, Any]:
        """Push the lease's expiry to now + lease_ttl (operator or the lease's token)."""
        lease = await leases.renew(ctx.store, access.lease.id, ttl=ctx.lease_ttl, now=ctx.clock())
        if lease is None:
            raise HTTPException(409, f"lease {access.lease.id} is {access.lease.state}")
        return await lease_document(ctx, lease, await ctx.store.get(lease.instance_id))

    @app.delete("/v1/leases/{lease_id}", tags=["leases"])
    async def release_lease(access: LeaseAccess) -> dict[str, Any]:
        """Release the lease: its key is removed and the instance goes to on_release."""
        lease = await release(ctx, access.lease.id, reason="released by the lessee")
        if lease is None:
            raise HTTPException(409, f"lease {access.lease.id} is {access.lease.state}")
        return await lease_document(ctx, lease, None)

    @app.get("/v1/instances", tags=["instances"])
    async def list_instances(ctx: Operator) -> dict[str, Any]:
        """Every live instance with its progress and the tail of its log."""
        lease_of = {lease.instance_id: lease.id for lease in await leases.active(ctx.store)}
        rows = await ctx.store.live()
        return {"instances": [await instance_document(ctx, r, lease_of) for r in rows]}

    @app.delete("/v1/instances/{instance_id}", tags=["instances"])
    async def destroy_instance(instance_id: ID, ctx: Operator) -> dict[str, Any]:
        """Destroy one instance (its lease, if any, ends first)."""
        row = await ctx.store.get(instance_id)
        if row is None or row.pool != ctx.store.pool:
            raise HTTPException(404, f"no instance {instance_id} in this pool")
        if ctx.destroy is None:
            raise HTTPException(503, "this server cannot destroy instances (no pool service)")
        for lease in await leases.active(ctx.store):
            if lease.instance_id == instance_id:
                await leases.end(
                    ctx.store, lease.id, now=ctx.clock(), reason="instance destroyed by the "
                    "operator", state="released",
                )  # fmt: skip
        await ctx.destroy(instance_id, "destroyed by the operator")
        after = await ctx.store.get(instance_id)
        return {"id": instance_id, "state": (after or row).state.value}

    @app.get("/v1/instances/{instance_id}/log", tags=["instances"])
    async def instance_log(
        instance_id: ID, ctx: Operator, from_: Annotated[int, Query(alias="from", ge=0)] = 0
    ) -> dict[str, Any]:
        """The instance's provisioning log from byte offset ``from``."""
        row = await ctx.store.get(instance_id)
        if row is None or row.pool != ctx.store.pool:
            raise HTTPException(404, f"no instance {instance_id} in this pool")
        got = await _call(_logstore(), "read_log", ctx.store, instance_id, from_)
        if got is None:
            return {"from": from_, "next": from_, "text": ""}
        if isinstance(got, dict):
            return {"from": from_, "next": got.get("next", from_), "text": got.get("text", "")}
        nxt, text = got
        return {"from": from_, "next": nxt, "text": text}

    @app.get("/metrics", tags=["public"], response_class=Response)
    async def metrics(ctx: Operator) -> Response:
        """Prometheus metrics (operator token)."""
        return Response(await ctx.metrics.render(ctx.store), media_type=CONTENT_TYPE)

    from comfyfleet.fleet.web import mount  # (wave2: fleet-dashboard) the dashboard at /

    mount(app, ctx)  # (wave2: fleet-dashboard)
    return app


# --- serving -----------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port), or exit 2."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(
            f"api listen address {escape_controls(listen)!r} is not HOST:PORT",
            hint='e.g. [api] listen = "127.0.0.1:8780", or pool serve --listen 127.0.0.1:8780',
        )
    return host, int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket on ``listen`` (port 0: a free one), or exit 2."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"the lease API cannot listen on {listen}: {exc.strerror or exc}",
            hint="pick a free address with [api] listen or pool serve --listen",
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _Server:
    """uvicorn without its own signal handlers (``pool serve`` owns SIGINT/SIGTERM)."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.server = Quiet(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )

    async def serve(self, sock: socket.socket) -> None:
        task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self.server.should_exit = True
            dashboard = getattr(self.server.config.app.state, "dashboard", None)
            if dashboard is not None:  # (wave2: fleet-dashboard) its SSE streams end first
                dashboard.hub.end_streams()
            with contextlib.suppress(Exception):
                await task
            raise


async def _sweep(ctx: ApiContext) -> None:
    while True:
        try:
            await expire_due(ctx)
            if ctx.attaches_keys():  # ready instances get their key before anyone asks
                await ctx.broker._attach_missing()
        except Exception as exc:  # a store hiccup: try again at the next sweep
            ctx.log(f"lease expiry sweep failed: {type(exc).__name__}: {exc}")
        await asyncio.sleep(ctx.sweep_interval)


async def serve_api(ctx: ApiContext, sock: socket.socket, app: FastAPI | None = None) -> None:
    """Serve the API on ``sock`` and release expired leases, until cancelled."""
    app = app or create_app(ctx)
    host, port = sock.getsockname()[:2]
    ctx.log(f"lease API on http://{host}:{port}")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_sweep(ctx))
        tg.create_task(_Server(app).serve(sock))


def service_context(
    cfg: Any, store: Store, provider: Any, leading: list[Any], token: str
) -> ApiContext:
    """The API context of ``pool serve``: keys over SSH with the pool's key; release flows
    and destroys through ``leading`` (the service of this replica while it leads, else
    empty: the leader's loop finds the row in ``releasing``)."""
    from comfyfleet.fleet.config import LocalProvider, SshProvider, VastProvider

    section = cfg.provider
    # ssh hosts: the operator's known_hosts; created instances: the key pinned per instance id
    host_keys = None if isinstance(section, SshProvider) else _pinned_host_keys(store)

    def login_key(row: InstanceRow) -> Any:
        if isinstance(section, VastProvider):
            return cfg.resolve(section.ssh_key)
        if isinstance(section, SshProvider):
            for h in section.hosts:  # the host's own key, else the default keys
                if (h.host, h.port) == (row.ssh_host, row.ssh_port) and h.key is not None:
                    return cfg.resolve(h.key)
        return None

    known = (
        cfg.resolve(section.known_hosts)
        if isinstance(section, SshProvider) and section.known_hosts
        else None
    )
    port = cfg.pool.comfyui_port

    async def comfyui_port(row: InstanceRow) -> int:
        if isinstance(port, int):
            return port
        # "auto": the port the instance's last complete run chose (and wrote in its manifest)
        from comfyfleet.fleet import logstore

        return await logstore.comfyui_port(store, row.id) or 8188

    def local_url(row: InstanceRow) -> str | None:
        if not isinstance(section, LocalProvider) or row.provider_id is None:
            return None
        slot = provider.slot(row.provider_id)
        return slot.url if slot is not None else None

    async def destroy(row_id: str, reason: str) -> None:
        if not leading:
            raise HTTPException(503, "this replica does not lead the pool; ask the leader")
        await leading[0]._destroy(row_id, None, reason, set())

    async def on_release(row_id: str, reason: str) -> None:
        if not leading:
            return  # the leader's loop runs the release flow of rows in releasing
        flow = getattr(leading[0], "release_flow", None)  # fleet-provisioning's on_release
        if flow is not None:
            await flow(row_id, reason)
        else:
            await leading[0]._destroy(row_id, None, reason, set())

    from comfyfleet.fleet.service import stderr_log

    ctx = ApiContext(
        store=store, operator_token=token, lease_ttl=cfg.pool.lease_ttl,
        keys=SshKeyInstaller(login_key, host_keys, known_hosts=known),
        comfyui_port=comfyui_port, local_url=local_url, on_release=on_release,
        destroy=destroy, log=stderr_log, metrics=default_metrics(),
        sweep_interval=min(5.0, max(0.2, cfg.pool.lease_ttl / 10)),
        attaches_keys=lambda: bool(leading),
    )  # fmt: skip
    # (wave2: fleet-dashboard) local slots' status.json: the dashboard's download progress
    # (wave2: fleet-api) ``section`` is the config (with base_dir); ``provider`` is the object
    ctx.local_base = cfg.resolve(section.base_dir) if isinstance(section, LocalProvider) else None  # type: ignore[attr-defined]
    return ctx


def _pinned_host_keys(store: Store) -> Callable[[InstanceRow], Awaitable[str | None]]:
    """The instance's host key as pinned at its first contact (fleet/hostkeys.py)."""

    async def pinned(row: InstanceRow) -> str | None:
        try:
            from comfyfleet.fleet import hostkeys  # fleet-provisioning's pins
        except ImportError:  # not there yet: nothing is pinned, known_hosts is checked
            return None
        return await hostkeys.pinned_key(store, row.id)

    return pinned
