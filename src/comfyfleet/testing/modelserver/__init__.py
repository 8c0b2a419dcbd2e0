"""A local model server that behaves like Hugging Face, Civitai, their CDNs and plain hosts.

Used by the test suite, the benchmarks and ``comfyfleet demo`` (one code path for all three).
It follows the documented behaviour in DESIGN.md and reference/downloaders.md, one module per
service: :mod:`.hf` (the hub), :mod:`.civitai`, :mod:`.cdn` (presigned URLs), :mod:`.plain`
(ordinary hosts); :mod:`.faults` serves bytes with the misbehaviour a test injects
(:class:`Faults`), :mod:`.server` is the app and its lifecycle.
"""

from comfyfleet.testing.modelserver.civitai import BROWSER_TOKENS, CivitaiVersion
from comfyfleet.testing.modelserver.faults import Faults
from comfyfleet.testing.modelserver.files import RequestRecord, StoredFile, make_safetensors
from comfyfleet.testing.modelserver.hf import COMMIT, HFRepo
from comfyfleet.testing.modelserver.server import ModelServer

__all__ = [
    "BROWSER_TOKENS",
    "COMMIT",
    "CivitaiVersion",
    "Faults",
    "HFRepo",
    "ModelServer",
    "RequestRecord",
    "StoredFile",
    "make_safetensors",
]
