"""The provider interface: the one small contract every provider module implements.

A provider rents (or claims) machines and reports what it has. It keeps no state the control
plane depends on: the store is the truth about intent, the provider's listing the truth about
what exists, and the reconciler compares the two (SkyPilot's ``sky/provision`` split, one module
per provider). Every method may be interrupted; the docstrings say what an interrupted or failed
call may still have done, because that is what the reconciler must assume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

#: the normalised instance statuses a provider reports
Status = Literal["loading", "running", "stopped", "exited", "offline", "created", "unknown"]

#: what :meth:`Provider.health` concludes from one instance record
Health = Literal["booting", "reachable", "failed"]

#: every label we create starts with this; providers list only such instances
LABEL_PREFIX = "comfyfleet-"

#: the environment variable that marks an instance as one pool's (the second half of ownership)
POOL_ENV = "COMFYFLEET_POOL"


@dataclass(frozen=True)
class Offer:
    """Something :meth:`Provider.create` can rent: a Vast ask, or a free SSH host."""

    offer_id: str  # Vast: the ask id; ssh: the host's id ("host:port")
    machine_id: str  # what the decaying blocklist keys on
    gpu_name: str
    num_gpus: int
    dph: float  # $/h, compute + storage at the configured disk
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SshEndpoint:
    """Where to SSH into an instance."""

    host: str
    port: int
    user: str


@dataclass(frozen=True)
class ProviderInstance:
    """One instance as the provider reports it right now."""

    provider_id: str
    label: str | None  # exact label as the provider reports it
    pool_marker: str | None  # value of COMFYFLEET_POOL in its env; None when absent
    status: str  # normalised: one of Status
    status_msg: str  # provider's status message (OCI errors show up here)
    ssh: SshEndpoint | None  # set once it is reachable (Vast: running + ssh_host/ssh_port)
    dph: float
    machine_id: str | None
    gpu_name: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Created:
    """What a successful create returned."""

    provider_id: str
    #: Vast's per-instance key (it can start/stop/destroy that instance): a secret, never
    #: logged or stored in clear
    instance_api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Claim:
    """What a claim file (an ssh host's, a local slot's) says: whose it is."""

    label: str
    pool: str
    line: str  # the exact content, for compare-and-remove


def parse_claim(line: str) -> Claim | None:
    """A claim line → :class:`Claim` (``line`` kept as given); None for anything we did not
    write."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    label, pool = data.get("label"), data.get("pool")
    if not isinstance(label, str) or not isinstance(pool, str):
        return None
    return Claim(label, pool, line)


@runtime_checkable
class Provider(Protocol):
    """One provider's instances: search, create, list, get, destroy.

    Errors are the classes of :mod:`comfyfleet.fleet.errors`. Transient failures (429, 5xx,
    dropped answers) are retried inside each call with jittered backoff, honouring per-endpoint
    minimum intervals, for a bounded time; then the call raises ``ProviderRateLimited`` /
    ``ProviderUnavailable`` / ``ProviderUnreachable`` and the caller retries on a later tick.
    """

    kind: str  # "vast" | "ssh" (| "local" later)

    async def search_offers(self) -> list[Offer]:
        """Offers matching the pool's filters, best first, blocked machines left out.

        Read-only: safe to repeat and to interrupt.
        """
        ...

    async def create(
        self,
        offer: Offer,
        *,
        label: str,
        env: Mapping[str, str],
        onstart: str,
        ssh_public_key: str,
    ) -> Created:
        """Rent ``offer`` as an instance labelled ``label`` (env carries COMFYFLEET_POOL).

        Not idempotent. Whenever it raises anything other than ``OfferUnavailable`` or
        ``ProviderAuthError`` — or is cancelled — the instance MAY exist: the caller resolves
        its intent by ``label`` through :meth:`list_instances`. ``CreateFailed.provider_id`` is
        set when an error answer still names the instance it made: that one exists (and bills),
        so track it and destroy it.
        """
        ...

    async def list_instances(self) -> list[ProviderInstance]:
        """Every instance whose label starts with ``comfyfleet-`` (one paged listing).

        These are candidates only: the ownership rule (exact label regex AND pool marker) is
        applied by the caller (``fleet/ownership.py``). Read-only. An instance absent here is
        gone only if the listing succeeded; a failed listing raises and proves nothing.
        """
        ...

    async def get(self, provider_id: str) -> ProviderInstance | None:
        """One instance now; ``None`` means the provider says it is gone. Read-only."""
        ...

    async def destroy(self, provider_id: str, *, label: str | None = None) -> None:
        """Destroy the instance (ssh: stop what runs there and release the host).

        ``label``, when given, is the label the caller knows the instance by: a provider whose
        ids are reused (ssh: ``host:port`` is claimed again and again) then touches the
        instance only while it still carries that label. Vast ids are never reused.

        Idempotent: an instance that is already gone is success. Retries 429/5xx inside for a
        bounded time, then raises; after a raise or an interruption the destroy may or may not
        have happened, so the caller keeps the row in ``destroying`` and calls again until the
        listing (or :meth:`get`) confirms the instance is gone.
        """
        ...

    def health(self, inst: ProviderInstance) -> tuple[Health, str]:
        """Classify one instance: ``booting`` (wait; deadlines are the caller's),
        ``reachable`` (ready to provision over SSH) or ``failed`` (will never get there), with a
        reason for a person. Pure: no I/O."""
        ...

    def block(self, machine_id: str, reason: str) -> None:
        """Keep ``machine_id`` out of :meth:`search_offers` for a while (a machine that failed us;
        the time doubles per repeat and decays). In memory; a no-op where it means nothing."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...
