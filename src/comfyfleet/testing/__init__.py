"""The offline world comfyfleet runs against: ``comfyfleet demo``'s as much as the tests'.

Nothing here is a mock of comfyfleet itself. It is the outside world, run locally and
faithful to the real one's documented behaviour:

- a model server on loopback that speaks Hugging Face's, Civitai's and a plain host's HTTP,
  with fault injection (statuses, stalls, rate limits, lying headers) for the tests;
- a stand-in ComfyUI (``standin/``: ComfyUI's startup and the API the provisioner checks,
  standard library only) and builders of local git repos for it and for custom nodes
  (``repos.py``), plus offline wheels so pip never goes online;
- the demo world (``demo_fixture.py``) that ties them together with a manifest and a
  workflow: ``comfyfleet demo``, the benchmarks and the test suite all build it the same way.

It ships in the package on purpose: the README's "run it" command needs it on a machine
without network, tokens or a GPU, and users' own scripts may use it to test their manifests:
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
