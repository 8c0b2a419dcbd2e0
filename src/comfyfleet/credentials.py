"""The tokens this process may use: the environment, or values given in memory.

``comfyfleet provision --secrets-stdin`` reads the fleet's secrets from its standard input
and gives them here, never to ``os.environ``: every subprocess (git, pip, ComfyUI, which
outlives provisioning) inherits the environment, so a secret there would sit in
``/proc/PID/environ`` for any later root user to read. Only the download engine asks here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

#: the names the provisioner can use (sources/auth.py); anything else is refused on input
TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")

_given: dict[str, str] = {}


def give(values: Mapping[str, str]) -> None:
    """Use ``values`` (name → token) in this process, ahead of the environment."""
    _given.update(values)


def get(name: str) -> str | None:
    """The token called ``name``: given in memory first, else the environment."""
    return _given.get(name) or os.environ.get(name) or None


def given_values() -> list[str]:
    """The tokens given in memory (for redaction)."""
    return list(_given.values())


def parse_secrets(text: str) -> dict[str, str]:
    """A JSON object of token names to values; ValueError naming what is wrong (never the
    value itself)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"secrets on stdin are not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(doc, dict):
        raise ValueError("secrets on stdin must be a JSON object of NAME: value")
    out: dict[str, str] = {}
    for name, value in doc.items():
        if name not in TOKEN_NAMES:
            raise ValueError(
                f"secret {name!r} is not one the provisioner uses ({', '.join(TOKEN_NAMES)})"
            )
        if not isinstance(value, str) or not value or any(ord(c) < 33 for c in value):
            raise ValueError(f"secret {name}: expected a non-empty token without spaces")
        out[name] = value
    return out
