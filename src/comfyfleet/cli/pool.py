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
        None, "--listen", help="Address of the lease API (next release; accepted and unused)."
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
                await lead(
                    store,
                    lambda fenced: PoolService(
                        cfg, fenced, provider, ssh_public_key=public_key
                    ).serve(),
                    ttl=cfg.pool.leader_ttl,
                    log=stderr_log,
                    listen=listen,
                    force_first=replica_lock is not None,
                )
            finally:
                await provider.aclose()
                await store.close()

        run_async(main, resume_hint="instances stay tracked; `pool serve` again adopts them")
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
