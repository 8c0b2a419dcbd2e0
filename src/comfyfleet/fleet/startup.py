"""Everything ``pool serve`` checks before its first create (a bad input costs no rented minute).

Order: the config (already loaded), the manifest it names (the provisioner's own loader),
credentials and the SSH key, the store, one listing from the provider (auth and reachability),
then ``check``'s remote probes of every model. Each refusal is one line and exit 2; a provider
that answers 429/5xx at start-up is retried until it answers, like at any other time.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from comfyfleet.errors import UsageError
from comfyfleet.fleet.config import LocalProvider, PoolConfig, SshProvider, VastProvider
from comfyfleet.fleet.errors import ProviderAuthError, ProviderError, ProviderUnreachable
from comfyfleet.fleet.providers.base import Provider, ProviderInstance

if TYPE_CHECKING:
    from comfyfleet import CheckReport, Manifest

API_KEY_ENV = "VAST_API_KEY"


class PreflightFailed(UsageError):
    """A model of the pool's manifest would not download (check's report says which)."""


def read_public_key(config: PoolConfig) -> str:
    """The public half of ``[provider] ssh_key`` (sent at create time), or exit 2."""
    if not isinstance(config.provider, VastProvider):
        return ""
    private = config.resolve(config.provider.ssh_key)
    public = private.with_name(private.name + ".pub")
    try:
        text = public.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(
            f"{config.source}: provider.ssh_key: cannot read {public}: {exc.strerror or exc}",
            hint=f"create a key pair (ssh-keygen -t ed25519 -f {private}) or fix the path",
        ) from None
    if not text.startswith(("ssh-", "ecdsa-", "sk-")):
        raise UsageError(
            f"{config.source}: provider.ssh_key: {public} is not an OpenSSH public key"
        )
    return text


def build_provider(config: PoolConfig) -> Provider:
    """The provider ``[provider]`` describes (VAST_API_KEY from the environment), or exit 2."""
    spec = config.provider
    if isinstance(spec, VastProvider):
        from comfyfleet.fleet.providers.vast import VastProvider as Vast

        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise ProviderAuthError(
                f"{API_KEY_ENV} is not set",
                hint="export VAST_API_KEY=<your key from the Vast.ai console>; nothing was created",
            )
        return Vast(
            spec.api_url,
            key,
            pool=config.name,
            offers=spec.offers.model_dump(exclude_none=True),
            image=spec.image,
            disk_gb=spec.disk_gb,
        )
    if isinstance(spec, SshProvider):
        from comfyfleet.fleet.providers.ssh import HostSpec, SshHostsProvider

        hosts = [
            HostSpec(h.host, port=h.port, user=h.user, key=config.resolve(h.key) if h.key else None)
            for h in spec.hosts
        ]
        known = config.resolve(spec.known_hosts) if spec.known_hosts else None
        return SshHostsProvider(
            hosts, pool=config.name, known_hosts=known, instance_root=config.pool.instance_root
        )
    assert isinstance(spec, LocalProvider)
    from comfyfleet.fleet.providers.local import LocalProvider as Local

    return Local(config.resolve(spec.base_dir), spec.ports, spec.gpus, pool=config.name)


async def first_listing(
    provider: Provider,
    *,
    log: Callable[[str], None],
    backoff: float = 1.0,
    backoff_max: float = 30.0,
) -> list[ProviderInstance]:
    """One successful listing: credentials and reachability proven, or exit 2.

    401/403 and DNS/refused/TLS failures stop the start (exit 2, one line); 429 and 5xx are
    retried with jittered backoff until the provider answers (a restart after a crash must come
    up while the provider has a bad minute).
    """
    delay = backoff
    while True:
        try:
            return await provider.list_instances()
        except (ProviderAuthError, ProviderUnreachable):
            raise  # exit 2: a wrong key or URL does not fix itself
        except ProviderError as exc:
            log(f"provider not answering yet, retrying in {delay:.0f}s: {exc}")
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, backoff_max)


def load_pool_manifest(config: PoolConfig) -> Manifest:
    """The manifest ``[pool] manifest`` names, through the provisioner's loader (exit 2 if bad)."""
    import comfyfleet

    return comfyfleet.load_manifest(config.manifest_path)


async def check_models(manifest: Manifest, *, root: Path) -> CheckReport:
    """``check``'s remote probes; raise :class:`PreflightFailed` when a required model fails.

    The disk verdict is left out: it is about the instance's disk, not this machine's.
    """
    import comfyfleet

    report = await comfyfleet.check(manifest, root)
    bad = [e for e in report.entries if e.required and not e.ok]
    if bad:
        lines = []
        for e in bad:
            lines.append(f"{e.status} {e.folder}/{e.filename or '?'} {e.url}: {e.message}")
            lines += [f"  suggestion: {s}" for s in e.suggestions]
        raise PreflightFailed(
            f"{len(bad)} required model(s) of the manifest would not download:\n  "
            + "\n  ".join(lines),
            hint="fix the manifest (or set the token it needs); no instance was created",
        )
    return report
