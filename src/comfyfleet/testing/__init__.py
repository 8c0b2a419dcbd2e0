"""The local world of the demo and of the tests: a model server, git repos, a stand-in ComfyUI.

``comfyfleet demo``, the benchmarks and users' own tests use it as much as the test suite:
``from comfyfleet.testing import ModelServer, build_demo, make_comfyui_repo, make_node_repo``.
Names load on first use (PEP 562), so importing the package pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES: dict[str, str] = {
    "ModelServer": "comfyfleet.testing.modelserver",
    "Faults": "comfyfleet.testing.modelserver",
    "make_safetensors": "comfyfleet.testing.modelserver",
    "build_demo": "comfyfleet.testing.demo_fixture",
    "DemoWorld": "comfyfleet.testing.demo_fixture",
    "make_comfyui_repo": "comfyfleet.testing.repos",
    "make_node_repo": "comfyfleet.testing.repos",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])
