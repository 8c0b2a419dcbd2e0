"""Providers: one module per kind (``vast``, ``ssh``) behind the interface in :mod:`.base`."""

from comfyfleet.fleet.providers.base import (
    LABEL_PREFIX,
    POOL_ENV,
    Created,
    Health,
    Offer,
    Provider,
    ProviderInstance,
    SshEndpoint,
    Status,
)

__all__ = [
    "LABEL_PREFIX",
    "POOL_ENV",
    "Created",
    "Health",
    "Offer",
    "Provider",
    "ProviderInstance",
    "SshEndpoint",
    "Status",
]
