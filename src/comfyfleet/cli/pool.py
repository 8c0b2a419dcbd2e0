"""``comfyfleet pool serve|status|destroy-all|resume --config POOL.toml``.

Thin shells over :mod:`comfyfleet.fleet`; the fleet modules are imported inside each command
so ``comfyfleet --help`` (and every other command) starts without SQLAlchemy or aiohttp.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from comfyfleet.cli.app import emit_json, fail, pool_app, run, run_async

if TYPE_CHECKING:
    from comfyfleet.fleet.config import PoolConfig
    from comfyfleet.fleet.providers.base import ProviderInstance
    from comfyfleet.fleet.store import InstanceRow, PoolRow

CONFIG = typer.Option(..., "--config", help="The pool config (POOL.toml).")


@pool_app.command("serve")
def serve(
    config: Path = CONFIG,
    listen: str | None = typer.Option(
        None, "--listen", help="HOST:PORT of the lease API (overrides [api] listen)."
    ),
) -> None:
    """Keep the pool at min_ready: reconcile with the provider every tick, create and destroy.

    Stops on SIGTERM/SIGINT within seconds (exit 130); instances stay tracked, and the next
    `pool serve` adopts them."""

    def body() -> int:
        from comfyfleet.fleet.config import load_pool_config
        from comfyfleet.fleet.service import PoolService, stderr_log
        from comfyfleet.fleet.startup import (
            build_provider,
            check_models,
            first_listing,
            load_pool_manifest,
            read_public_key,
        )
        from comfyfleet.fleet.store import Store

        cfg = load_pool_config(config)
        # (wave2: fleet-replicas) SQLite: one serve per store file, refused before anything else
        from comfyfleet.fleet.leader import lead, single_replica

        replica_lock = single_replica(cfg.store_url)
        # (wave2: fleet-api) the lease API: no operator token or a bad/busy address is exit 2
        import asyncio

        from comfyfleet.fleet.api import bind, operator_token_from_env, serve_api, service_context
        from comfyfleet.fleet.metrics import meter_provider

        api_token = operator_token_from_env()
        api_sock = bind(listen or cfg.api.listen)
        manifest = load_pool_manifest(cfg)
        public_key = read_public_key(cfg)
        provider = build_provider(cfg)

        async def main() -> None:
            try:
                store = await Store.open(cfg.store_url, pool=cfg.name)
            except BaseException:
                await provider.aclose()
                raise
            try:
                listing = await first_listing(provider, log=stderr_log)
                stderr_log(
                    f"pool {cfg.name}: provider {provider.kind} answers ({len(listing)} listed)"
                )
                await check_models(manifest, root=cfg.base_dir)
                stderr_log(f"pool {cfg.name}: manifest checked; serving (tick {cfg.pool.tick:g}s)")
                # (wave2: fleet-replicas) one replica leads: the control loop runs on a store
                # fenced by its epoch; a lost lead cancels it (see fleet/leader.py)
                # (wave2: fleet-api) the API runs on every replica beside the election; the
                # leading service (if this replica leads) runs release flows and destroys
                leading: list[PoolService] = []

                async def work(fenced: Store) -> None:
                    service = PoolService(cfg, fenced, provider, ssh_public_key=public_key)
                    leading[:] = [service]
                    try:
                        await service.serve()
                    finally:
                        leading.clear()

                ctx = service_context(cfg, store, provider, leading, api_token)
                meter_provider(provider, store, ctx.metrics)  # errors by kind, orphans
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(serve_api(ctx, api_sock))
                    tg.create_task(
                        lead(
                            store,
                            work,
                            ttl=cfg.pool.leader_ttl,
                            log=stderr_log,
                            listen=listen or cfg.api.listen,
                            force_first=replica_lock is not None,
                        )
                    )
            finally:
                await provider.aclose()
                await store.close()

        run_async(
            main,
            resume_hint="instances stay tracked; `pool serve` again adopts them",
            server=True,
        )
        return 0

    run(body)


@pool_app.command("status")
def status(
    config: Path = CONFIG,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document to stdout."),
    live: bool = typer.Option(False, "--live", help="Also ask the provider what it has now."),
) -> None:
    """Show the pool's instances from the store: state, age, $/h, and the spend per hour."""

    def body() -> int:
        from comfyfleet.fleet.config import load_pool_config
        from comfyfleet.fleet.store import Store

        cfg = load_pool_config(config)
        provider = None
        if live:
            from comfyfleet.fleet.startup import build_provider

            provider = build_provider(cfg)

        async def main() -> dict[str, Any]:
            store = await Store.open(cfg.store_url, pool=cfg.name)
            try:
                rows = await store.live()
                pool = await store.pool_row()
                listing = None
                if provider is not None:
                    try:
                        listing = await provider.list_instances()
                    finally:
                        await provider.aclose()
                doc = status_document(cfg, rows, pool, listing, now=time.time())
                # (wave2: fleet-replicas) the replicas, who leads since when, the epoch
                from comfyfleet.fleet.leader import replica_status

                doc.update(await replica_status(store.engine, cfg.name, cfg.pool.leader_ttl))
                return doc
            finally:
                await store.close()

        doc = run_async(main, resume_hint="nothing was changed")
        if json_out:
            emit_json(doc)
        else:
            _print_status(doc)
        return 0

    run(
        body,
        json_doc={"instances": [], "spend_per_hour": None, "replicas": []} if json_out else None,
    )


def status_document(
    cfg: PoolConfig,
    rows: list[InstanceRow],
    pool: PoolRow,
    listing: list[ProviderInstance] | None,
    *,
    now: float,
) -> dict[str, Any]:
    """The ``pool status --json`` document (DESIGN.md's required fields, and more)."""
    from comfyfleet.fleet.reconcile import owned

    by_label = {i.label: i for i in owned(listing or [], cfg.name)}
    instances = []
    for r in rows:
        item: dict[str, Any] = {
            "id": r.id,
            "provider_id": r.provider_id,
            "state": r.state.value,
            "label": r.label,
            "dph": r.dph,
            "lease_id": r.lease_id,
            "age_s": round(now - r.created_at, 1),
            "in_state_s": round(now - r.state_since, 1),
            "gpu": r.gpu_name,
            "offer_id": r.offer_id,
            "failure_reason": r.failure_reason,
        }
        if listing is not None:
            inst = by_label.pop(r.label, None)
            item["provider_status"] = inst.status if inst else None
        instances.append(item)
    doc: dict[str, Any] = {
        "pool": cfg.name,
        "draining": pool.draining,
        "instances": instances,
        "spend_per_hour": round(sum(r.dph for r in rows), 4),
    }
    if listing is not None:
        # ours by the ownership rule, yet not tracked as live: pool serve destroys these
        doc["untracked"] = [
            {"provider_id": i.provider_id, "label": i.label, "status": i.status, "dph": i.dph}
            for i in by_label.values()
        ]
    return doc


def _print_status(doc: dict[str, Any]) -> None:
    from comfyfleet.names import escape_controls

    head = f"pool {doc['pool']}" + (" (draining: creates stopped)" if doc["draining"] else "")
    print(f"{head}: {len(doc['instances'])} instance(s), ${doc['spend_per_hour']:.3f}/h")
    for i in doc["instances"]:
        line = (
            f"  {i['id']}  {i['state']:<12} {i['provider_id'] or '-':>10}  "
            f"age {_age(i['age_s']):>6}  ${i['dph']:.3f}/h  {i['gpu'] or ''}"
        )
        if "provider_status" in i:
            line += f"  provider: {i['provider_status'] or 'gone'}"
        if i["failure_reason"]:
            line += f"  ({i['failure_reason']})"
        print(escape_controls(line))
    for u in doc.get("untracked", []):
        print(escape_controls(f"  untracked {u['provider_id']} {u['label']} {u['status']}"))
    if "replicas" in doc:  # (wave2: fleet-replicas)
        print(f"epoch {doc['epoch']}: {len(doc['replicas'])} replica(s)")
        for r in doc["replicas"]:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["since"]))
            role = "leader " if r["leader"] else "standby"
            print(escape_controls(f"  {role} {r['id']}  since {since} UTC  {r['listen'] or ''}"))


def _age(seconds: float) -> str:
    from comfyfleet.units import format_duration

    return format_duration(seconds)


@pool_app.command("destroy-all")
def destroy_all(
    config: Path = CONFIG,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Destroy every instance of the pool and wait until the provider lists none of ours.

    Marks the pool draining first, so a running `pool serve` stops creating; `pool resume`
    clears it."""

    def body() -> int:
        from comfyfleet.fleet.config import load_pool_config
        from comfyfleet.fleet.startup import build_provider, read_public_key

        cfg = load_pool_config(config)
        if not yes:
            if not sys.stdin.isatty():
                fail("destroy-all asks for confirmation; nothing was changed — pass --yes")
            if not typer.confirm(f"Destroy every instance of pool {cfg.name!r}?"):
                print("nothing was changed", file=sys.stderr)
                return 1
        read_public_key(cfg)  # same start-up checks as serve, so both see one provider
        provider = build_provider(cfg)
        count = run_async(
            lambda: _drain(cfg, provider),
            resume_hint="the pool stays draining; run destroy-all again to finish",
        )
        print(f"pool {cfg.name}: none of its instances is left ({count} destroyed)")
        return 0

    run(body)


async def _drain(cfg: PoolConfig, provider: Any) -> int:
    import asyncio

    from comfyfleet.fleet.reconcile import owned
    from comfyfleet.fleet.service import PoolService, stderr_log
    from comfyfleet.fleet.startup import first_listing
    from comfyfleet.fleet.store import Store

    try:
        store = await Store.open(cfg.store_url, pool=cfg.name)
    except BaseException:
        await provider.aclose()
        raise
    try:
        await first_listing(provider, log=stderr_log)
        await store.set_draining(True)
        stderr_log(f"pool {cfg.name}: draining (no more creates)")
        service = PoolService(cfg, store, provider)
        destroyed: set[str] = set()
        while True:
            report = await service.tick()
            mine = owned(service.last_listing, cfg.name)
            destroyed.update(i.provider_id for i in mine)
            if report.error is None and not mine:
                await service.tick()  # record the confirmations (destroying → destroyed)
                return len(destroyed)
            stderr_log(f"pool {cfg.name}: {len(mine)} instance(s) of ours still listed")
            await asyncio.sleep(min(cfg.pool.tick, 2.0))
    finally:
        await provider.aclose()
        await store.close()


@pool_app.command("resume")
def resume(config: Path = CONFIG) -> None:
    """Clear `draining` (set by destroy-all): `pool serve` creates instances again."""

    def body() -> int:
        from comfyfleet.fleet.config import load_pool_config
        from comfyfleet.fleet.store import Store

        cfg = load_pool_config(config)

        async def main() -> None:
            store = await Store.open(cfg.store_url, pool=cfg.name)
            try:
                await store.set_draining(False)
            finally:
                await store.close()

        run_async(main, resume_hint="nothing was changed")
        print(f"pool {cfg.name}: resumed (pool serve creates instances again)")
        return 0

    run(body)


# --- lease clients (wave2: fleet-api) ---------------------------------------------------------


def _api_base(cfg: PoolConfig) -> str:
    """The lease API's URL from ``[api] listen`` (a wildcard address is reached on loopback)."""
    from comfyfleet.fleet.api import parse_listen

    host, port = parse_listen(cfg.api.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _api_call(
    cfg: PoolConfig, method: str, path: str, *, body: Any = None, timeout: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """One request to the pool's lease API with the operator token: (status, JSON body)."""

    import aiohttp

    from comfyfleet.errors import ComfyfleetError
    from comfyfleet.fleet.api import operator_token_from_env

    token = operator_token_from_env()
    url = _api_base(cfg) + path
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            try:
                doc = await r.json(content_type=None)
            except ValueError:
                doc = {}
            status = r.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ComfyfleetError(
            f"cannot reach the lease API at {_api_base(cfg)}: {type(exc).__name__}: {exc}",
            hint="is `pool serve` running with this config? ([api] listen says where)",
        ) from None
    if status == 401:
        from comfyfleet.errors import UsageError

        raise UsageError(
            f"the lease API at {_api_base(cfg)} refused the token (401)",
            hint="set COMFYFLEET_API_TOKEN to the token `pool serve` was started with",
        )
    return status, doc if isinstance(doc, dict) else {}


def _api_failure(status: int, doc: dict[str, Any], what: str) -> Any:
    from comfyfleet.errors import ComfyfleetError, UsageError
    from comfyfleet.names import escape_controls

    detail = escape_controls(str(doc.get("detail") or f"HTTP {status}"))
    if status in (404, 422):
        return UsageError(f"{what}: {detail}", hint="check the lease id (pool status lists them)")
    return ComfyfleetError(f"{what}: {detail}")


def _write_key(cfg: PoolConfig, lease_id: str, private_key: str) -> Path:
    """The lease's private key in a 0600 file beside the pool config (``leases/ID.key``)."""
    import os

    from comfyfleet.names import plain_name

    folder = cfg.base_dir / "leases"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{plain_name(lease_id, what='lease id')}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(private_key)
    return path


def lease_output(doc: dict[str, Any], key_file: Path | None) -> dict[str, Any]:
    """The ``pool lease --json`` document (DESIGN.md's shape) from the API's answer."""
    out: dict[str, Any] = {
        "lease_id": doc["lease_id"],
        "instance_id": doc["instance_id"],
        "expires_at": doc["expires_at"],
    }
    if "url" in doc:
        out["url"] = doc["url"]
    if "ssh" in doc:
        out["ssh"] = doc["ssh"]
        out["key_file"] = str(key_file)
        out["tunnel"] = str(doc["tunnel"]).replace(
            f"-i lease-{doc['lease_id']}.key", f"-i {key_file}"
        )
    return out


@pool_app.command("lease")
def lease(
    config: Path = CONFIG,
    wait: float = typer.Option(60.0, "--wait", min=0, help="Seconds to wait for a ready one."),
    hold: bool = typer.Option(False, "--hold", help="Renew until Ctrl-C, then release."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document to stdout."),
) -> None:
    """Lease a ready instance from `pool serve`'s API: the key goes to a 0600 file, and the
    ssh and tunnel commands are printed. Exit 1 when none was ready within --wait."""

    def body() -> int:
        import asyncio

        from comfyfleet.errors import ComfyfleetError
        from comfyfleet.fleet.config import load_pool_config
        from comfyfleet.names import escape_controls

        cfg = load_pool_config(config)

        async def main() -> dict[str, Any]:
            status, doc = await _api_call(
                cfg, "POST", "/v1/leases", body={"wait_s": wait}, timeout=wait + 30
            )
            if status == 503:
                raise ComfyfleetError(
                    f"no instance was ready within {wait:g}s "
                    f"(queue position {doc.get('queue_position')})",
                    hint="try again with a longer --wait, or raise min_ready",
                )
            if status != 201:
                raise _api_failure(status, doc, "lease refused")
            key_file = (
                _write_key(cfg, doc["lease_id"], doc["private_key"]) if "ssh" in doc else None
            )
            out = lease_output(doc, key_file)
            if json_out:
                emit_json(out)
            else:
                print(f"lease {out['lease_id']} on instance {out['instance_id']}, "
                      f"expires {out['expires_at']}")  # fmt: skip
                if "url" in out:
                    print(f"ComfyUI: {out['url']}")
                else:
                    ssh = out["ssh"]
                    print(f"ssh -i {key_file} -p {ssh['port']} {ssh['user']}@{ssh['host']}")
                    print(escape_controls(out["tunnel"]))
                print(f"release: comfyfleet pool release --config {config} {out['lease_id']}")
            if not hold:
                return out
            try:
                while True:
                    expires_in = float(doc.get("expires_in_s") or cfg.pool.lease_ttl)
                    await asyncio.sleep(max(1.0, min(expires_in, cfg.pool.lease_ttl) / 3))
                    status, doc = await _api_call(
                        cfg, "POST", f"/v1/leases/{out['lease_id']}/renew"
                    )
                    if status != 200:
                        raise _api_failure(status, doc, "renew failed")
            finally:
                # Ctrl-C (a cancellation) or a failed renew: the lease is released either way
                await asyncio.shield(_release_quietly(cfg, out["lease_id"]))

        run_async(main, resume_hint="the lease was released")
        return 0

    run(body, json_doc={"lease_id": None, "instance_id": None} if json_out else None)


async def _release_quietly(cfg: PoolConfig, lease_id: str) -> None:
    import sys as _sys

    status, _ = await _api_call(cfg, "DELETE", f"/v1/leases/{lease_id}")
    print(f"lease {lease_id} released" if status == 200 else f"lease {lease_id}: HTTP {status}",
          file=_sys.stderr)  # fmt: skip


@pool_app.command("renew")
def renew(config: Path = CONFIG, lease_id: str = typer.Argument(..., help="The lease.")) -> None:
    """Renew a lease for another lease_ttl."""
    _lease_action(config, lease_id, "POST", "/renew", "renewed, expires {expires_at}")


@pool_app.command("release")
def release(config: Path = CONFIG, lease_id: str = typer.Argument(..., help="The lease.")) -> None:
    """Release a lease: its key is removed and the instance goes to on_release."""
    _lease_action(config, lease_id, "DELETE", "", "released")


def _lease_action(config: Path, lease_id: str, method: str, suffix: str, done: str) -> None:
    def body() -> int:
        from comfyfleet.fleet.config import load_pool_config
        from comfyfleet.names import plain_name

        cfg = load_pool_config(config)
        lid = plain_name(lease_id, what="lease id")

        async def main() -> dict[str, Any]:
            status, doc = await _api_call(cfg, method, f"/v1/leases/{lid}{suffix}")
            if status != 200:
                raise _api_failure(status, doc, f"lease {lid}")
            return doc

        doc = run_async(main, resume_hint="run it again")
        print(f"lease {lid} " + done.format(**doc))
        return 0

    run(body)
