"""The built-in fact table of custom-node packs (``node_packs.toml``), loaded once."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files


@dataclass(frozen=True)
class NodePack:
    """One pack: registry id, repository, the classes that identify it, its loaders' folders."""

    registry_id: str
    repo: str
    classes: tuple[str, ...]
    loaders: dict[str, str] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class PackTable:
    """Lookups over the table."""

    packs: tuple[NodePack, ...]
    core_loaders: dict[str, str]

    def by_registry_id(self, registry_id: str) -> NodePack | None:
        """The pack published under ``registry_id`` (case-insensitive, as the registry is)."""
        wanted = registry_id.lower()
        return next((p for p in self.packs if p.registry_id.lower() == wanted), None)

    def by_class(self, class_type: str) -> NodePack | None:
        """The pack that defines node class ``class_type``."""
        return next((p for p in self.packs if class_type in p.classes), None)

    def loader_folder(self, class_type: str) -> str | None:
        """The model folder a loader class reads, when the table knows it."""
        if class_type in self.core_loaders:
            return self.core_loaders[class_type]
        return next((p.loaders[class_type] for p in self.packs if class_type in p.loaders), None)


@functools.cache
def pack_table() -> PackTable:
    """The table shipped with comfyfleet."""
    data = tomllib.loads(files("comfyfleet.importers").joinpath("node_packs.toml").read_text())
    packs = tuple(
        NodePack(
            registry_id=p["registry_id"],
            repo=p["repo"],
            classes=tuple(p.get("classes", ())),
            loaders=dict(p.get("loaders", {})),
            source=p.get("source", ""),
        )
        for p in data.get("packs", [])
    )
    return PackTable(packs, dict(data.get("core", {}).get("loaders", {})))
