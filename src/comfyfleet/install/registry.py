"""The Comfy Registry: a ``registry_id`` of ``[[nodes]]`` resolved to the node's git repository.

``GET {endpoint}/nodes/{id}`` answers a node record whose ``repository`` is the pack's source
repository (docs.comfy.org "Retrieve a specific node by ID"); an unknown id answers 404. This is
what Vast's ``provisioner_comfyui`` does with a workflow's ``cnr_id``
(reference/provisioning_anchors.md §1.2). We then clone that repository ourselves, pinned like
any other node, instead of installing the registry's archive through cm-cli (whose failures exit
0, ComfyUI-Manager #1314). ``COMFY_REGISTRY_ENDPOINT`` points the client at another server (a
mirror, or the tests' double), like ``HF_ENDPOINT`` and ``CIVITAI_ENDPOINT``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from comfyfleet.errors import NotFound, ServerError, Unreachable
from comfyfleet.install.comfyui import load_state, save_state

REGISTRY_PUBLIC = "https://api.comfy.org"
#: what we accept as a node's repository: an http(s) git URL, nothing a shell or git would
#: read as an option or a local path
_REPO_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::\d+)?/[A-Za-z0-9._~%/+-]+$")


def registry_endpoint() -> str:
    """The registry API: ``$COMFY_REGISTRY_ENDPOINT`` or ``https://api.comfy.org`` (no final /)."""
    return (os.environ.get("COMFY_REGISTRY_ENDPOINT") or REGISTRY_PUBLIC).rstrip("/")


@dataclass(frozen=True)
class RegistryNode:
    """What the registry says about one node pack."""

    id: str
    repository: str
    latest_version: str | None = None


async def resolve_registry_id(
    session: aiohttp.ClientSession, node_id: str, *, timeout: float = 20.0
) -> RegistryNode:
    """The repository of registry node ``node_id``; NotFound, ServerError or Unreachable."""
    url = f"{registry_endpoint()}/nodes/{quote(node_id, safe='')}"
    try:
        async with session.get(
            url,
            headers={"Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as reply:
            if reply.status == 404:
                raise NotFound(
                    f"registry id {node_id!r} is not in the Comfy Registry ({registry_endpoint()})",
                    hint='check the id, or give the node\'s repo = "<git URL>" instead',
                )
            if reply.status != 200:
                raise ServerError(
                    f"the Comfy Registry answered {reply.status} for {node_id!r}",
                    hint="try again later, or give the node's repo instead of registry_id",
                )
            data = await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unreachable(
            f"the Comfy Registry ({registry_endpoint()}) could not be asked about {node_id!r}: "
            f"{type(exc).__name__}",
            hint="check the network, or give the node's repo instead of registry_id",
        ) from None
    repo = data.get("repository") if isinstance(data, dict) else None
    if not isinstance(repo, str) or not _REPO_URL.match(repo.strip()):
        raise NotFound(
            f"the Comfy Registry lists {node_id!r} without a usable git repository",
            hint='give the node\'s repo = "<git URL>" instead of registry_id',
        )
    latest = data.get("latest_version")
    version = latest.get("version") if isinstance(latest, dict) else None
    return RegistryNode(node_id, repo.strip(), version if isinstance(version, str) else None)


async def registry_repo(node_id: str, root: Path) -> str:
    """The repository of ``node_id`` for provisioning ``root``, asked of the registry once.

    The answer is kept in the install state, so a re-run on a ready root needs no network
    (and installs from the repository it installed from before).
    """
    key = f"registry:{node_id}"
    cached = load_state(root).get(key)
    if isinstance(cached, str) and _REPO_URL.match(cached):
        return cached
    async with aiohttp.ClientSession() as session:
        node = await resolve_registry_id(session, node_id)
    state = load_state(root)
    state[key] = node.repository
    save_state(root, state)
    return node.repository
