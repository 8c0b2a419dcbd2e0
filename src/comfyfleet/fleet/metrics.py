"""The pool's Prometheus metrics (``GET /metrics``), one registry per API app.

Gauges (instances by state, spend per hour) are read from the store at each scrape; the
histograms and counters are observed where things happen: the lease wait in the lease
broker, time to ready when an instance gets its standby key, orphans destroyed and provider
errors by kind by :func:`meter_provider` around the pool's provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from comfyfleet.fleet.states import State

if TYPE_CHECKING:
    from comfyfleet.fleet.store import InstanceRow, Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetMetrics:
    """Every metric of one pool, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances = Gauge(
            "comfyfleet_instances", "Instances of the pool by state", ["state"], registry=r
        )
        self.spend = Gauge(
            "comfyfleet_spend_per_hour_dollars", "Summed $/h of every live instance", registry=r
        )
        self.lease_wait = Histogram(
            "comfyfleet_lease_wait_seconds", "Time from a lease request to its lease",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600), registry=r,
        )  # fmt: skip
        self.time_to_ready = Histogram(
            "comfyfleet_time_to_ready_seconds", "Time from an instance's intent to ready",
            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200), registry=r,
        )  # fmt: skip
        self.orphans = Counter(
            "comfyfleet_orphans_destroyed", "Untracked instances of ours destroyed", registry=r
        )
        self.provider_errors = Counter(
            "comfyfleet_provider_errors", "Provider calls that failed, by kind", ["kind"],
            registry=r,
        )  # fmt: skip
        self.leases = Counter(
            "comfyfleet_leases", "Lease requests by outcome", ["outcome"], registry=r
        )

    def observe_ready(self, row: InstanceRow, now: float) -> None:
        """An instance just became ready (its standby key is attached)."""
        self.time_to_ready.observe(max(0.0, now - row.created_at))

    async def render(self, store: Store) -> bytes:
        """The text exposition, with the gauges read from the store now."""
        rows = await store.live()
        counts = {s.value: 0 for s in State}
        for row in rows:
            counts[row.state.value] += 1
        for state, n in counts.items():
            self.instances.labels(state=state).set(n)
        self.spend.set(round(sum(r.dph for r in rows), 4))
        return generate_latest(self.registry)


_DEFAULT: list[FleetMetrics] = []


def default_metrics() -> FleetMetrics:
    """The process's metrics (what ``pool serve``'s API shows and its loop reports into)."""
    if not _DEFAULT:
        _DEFAULT.append(FleetMetrics())
    return _DEFAULT[0]


def meter_provider(provider: Any, store: Store, metrics: FleetMetrics) -> Any:
    """Count ``provider``'s failed calls by error kind and its destroys of untracked (orphan)
    instances. The calls are wrapped on the object itself, so it stays what it is
    (``isinstance`` checks of the provider still hold)."""
    from comfyfleet.fleet.errors import ProviderError

    def counted(name: str) -> None:
        call = getattr(provider, name)

        async def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return await call(*args, **kw)
            except ProviderError as exc:
                metrics.provider_errors.labels(kind=type(exc).__name__).inc()
                raise

        setattr(provider, name, wrapper)

    for name in ("list_instances", "search_offers", "create", "get"):
        if hasattr(provider, name):
            counted(name)
    destroy = provider.destroy

    async def metered_destroy(provider_id: str, **kw: Any) -> Any:
        tracked = any(r.provider_id == provider_id for r in await store.live())
        try:
            result = await destroy(provider_id, **kw)
        except ProviderError as exc:
            metrics.provider_errors.labels(kind=type(exc).__name__).inc()
            raise
        if not tracked:
            metrics.orphans.inc()
        return result

    provider.destroy = metered_destroy
    return provider
