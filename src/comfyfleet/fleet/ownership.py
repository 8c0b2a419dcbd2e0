"""The ownership rule: which provider instances are this pool's to manage (and destroy).

An instance is ours only if its label is exactly ``comfyfleet-<pool>-<12 hex>`` AND its
environment carries ``COMFYFLEET_POOL=<pool>``. Never a prefix match: pool ``sdxl`` must not
touch ``comfyfleet-sdxl-xl-…``, and a look-alike label without the marker is someone else's.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from typing import Protocol

from comfyfleet.fleet.providers.base import LABEL_PREFIX, POOL_ENV

__all__ = ["LABEL_PREFIX", "POOL_ENV", "is_ours", "label_pattern", "new_label"]


class Labelled(Protocol):
    label: str | None
    pool_marker: str | None


@lru_cache(maxsize=64)
def label_pattern(pool: str) -> re.Pattern[str]:
    """The exact label regex of ``pool``."""
    return re.compile(rf"^{re.escape(LABEL_PREFIX + pool)}-[0-9a-f]{{12}}$")


def new_label(pool: str) -> str:
    """A fresh, unguessable label for an instance of ``pool``."""
    return f"{LABEL_PREFIX}{pool}-{secrets.token_hex(6)}"


def is_ours(instance: Labelled, pool: str) -> bool:
    """Whether ``instance`` belongs to ``pool`` by the ownership rule (label AND env marker)."""
    label = instance.label
    return (
        label is not None
        and instance.pool_marker == pool
        and label_pattern(pool).fullmatch(label) is not None
    )
