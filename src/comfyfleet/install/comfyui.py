"""ComfyUI itself: the git checkout, the Python it runs on, and its requirements.

The Python is ``comfyui.python`` when the manifest names one (GPU images ship a ready venv with
CUDA torch), else ``ROOT/venv``, created with ``--system-site-packages`` so the image's torch
is used rather than re-downloaded. Every pip call — ours, and any ``install.py`` that shells out
to pip — is bound by a constraints file that pins the torch family at the versions installed
in that interpreter (``-c`` and ``PIP_CONSTRAINT``): a requirement that would move torch fails
loudly instead of silently replacing a multi-GB CUDA build (ComfyUI-Manager #2728, ComfyUI #7055).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.errors import CommandFailed, InstallError
from comfyfleet.events import STATE_DIR, RunLog, write_atomic
from comfyfleet.install.git import Checkout, ensure_checkout
from comfyfleet.install.process import run_command
from comfyfleet.manifest import Manifest

#: distributions pinned by the constraints file when the interpreter has them
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "xformers", "triton")
STATE_FILE = "install_state.json"

_LIST_VERSIONS = """
import importlib.metadata as md, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


@dataclass
class Environment:
    """The interpreter ComfyUI and its nodes run on, and the pip constraints that bind it."""

    python: Path
    constraints: Path
    pinned: dict[str, str]

    @property
    def pip_env(self) -> dict[str, str]:
        """Environment for pip and install.py: constraints apply to nested pip calls too."""
        return {"PIP_CONSTRAINT": str(self.constraints), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def pip_install(self, requirements: Path) -> list[str]:
        """argv of ``pip install -r requirements -c constraints`` on this interpreter."""
        return [
            str(self.python), "-m", "pip", "install", "--no-input",
            "-r", str(requirements), "-c", str(self.constraints),
        ]  # fmt: skip


def load_state(root: Path) -> dict[str, Any]:
    """What previous runs installed (``ROOT/.comfyfleet/install_state.json``)."""
    try:
        return json.loads((root / STATE_DIR / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state(root: Path, state: dict[str, Any]) -> None:
    """Rewrite the install state atomically."""
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(root / STATE_DIR / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))


def file_digest(*paths: Path) -> str:
    """sha256 over the contents of the given files (missing files count as empty)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"\0missing")
    return h.hexdigest()


def has_requirements(path: Path) -> bool:
    """True if a requirements file names anything (pip complains about nothing otherwise)."""
    if not path.is_file():
        return False
    return any(
        line.strip() and not line.lstrip().startswith("#") for line in path.read_text().splitlines()
    )


async def _create_venv(venv: Path, log: RunLog) -> None:
    """``ROOT/venv`` on the image's Python, with the image's site-packages (its torch).

    The venv gets no pip of its own when the image's pip is importable through those
    site-packages: ``venv/bin/python -m pip`` then installs into the venv, and the 4 s of
    ensurepip are saved. Without one, ensurepip gives the venv its own pip.
    """
    await run_command(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        log=log,
        source="venv",
        timeout=600,
    )
    python = str(venv / "bin" / "python")
    try:
        await run_command([python, "-m", "pip", "--version"], log=None, source="venv", timeout=120)
    except CommandFailed:
        log.info("environment", "the image's Python has no pip: installing one (ensurepip)")
        await run_command(
            [python, "-m", "ensurepip", "--default-pip"], log=log, source="venv", timeout=600
        )


async def prepare_environment(manifest: Manifest, root: Path, log: RunLog) -> Environment:
    """The interpreter (existing or ``ROOT/venv``) and its torch-family constraints file."""
    if manifest.comfyui.python:
        python = Path(manifest.comfyui.python).expanduser()
        if not python.exists():
            raise InstallError(
                f"comfyui.python {python} does not exist",
                hint="point comfyui.python at the image's interpreter, or leave it empty to "
                "create ROOT/venv",
            )
    else:
        venv = root / "venv"
        python = comfyui_python(manifest, root)
        if not python.exists():
            log.info(
                "environment", f"creating {venv} (--system-site-packages: reuses the image's torch)"
            )
            await _create_venv(venv, log)
    try:
        out = await run_command(
            [str(python), "-c", _LIST_VERSIONS, *TORCH_FAMILY],
            log=None,
            source="python",
            timeout=120,
        )
        pinned = json.loads(out.strip().splitlines()[-1])
    except (CommandFailed, ValueError, IndexError) as exc:
        raise InstallError(f"cannot run {python}: {exc}", hint="check comfyui.python") from None
    constraints = root / STATE_DIR / "constraints.txt"
    lines = ["# written by comfyfleet: keeps the torch family at the installed versions"]
    lines += [f"{name}=={version}" for name, version in sorted(pinned.items())]
    constraints.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(constraints, "\n".join(lines) + "\n", fsync=False)
    if pinned:
        log.info(
            "environment", "pinned: " + ", ".join(f"{k}=={v}" for k, v in sorted(pinned.items()))
        )
    return Environment(python=python, constraints=constraints, pinned=pinned)


async def checkout_comfyui(manifest: Manifest, root: Path, log: RunLog) -> Checkout:
    """Put ``ROOT/<comfyui.path>`` at ``comfyui.ref`` (never clobbering local work)."""
    settings = manifest.comfyui
    dest = manifest.comfyui_dir(root)
    checkout = await ensure_checkout(
        settings.repo, settings.ref or None, dest, log=log, source="comfyui"
    )
    if checkout.warning:
        log.info("comfyui", checkout.warning)
    log.info("comfyui", f"{checkout.action} at {checkout.commit[:12]}")
    return checkout


async def install_requirements(
    manifest: Manifest,
    root: Path,
    log: RunLog,
    *,
    env: Environment,
    pip_lock: asyncio.Lock | None = None,
) -> bool:
    """pip-install ComfyUI's requirements.txt under the constraints; skipped when unchanged.

    Returns True when pip ran.
    """
    dest = manifest.comfyui_dir(root)
    requirements = dest / "requirements.txt"
    if not manifest.comfyui.install_requirements or not has_requirements(requirements):
        return False
    digest = file_digest(requirements, env.constraints) + str(env.python)
    if load_state(root).get("comfyui_requirements") == digest:
        log.info("comfyui", "requirements unchanged since the last install")
        return False
    async with pip_lock or asyncio.Lock():
        try:
            await run_command(
                env.pip_install(requirements),
                log=log,
                source="pip comfyui",
                cwd=dest,
                env=env.pip_env,
                hint="see provision.log; a conflict with the pinned torch family means a "
                "requirement wants another torch",
            )
        except CommandFailed as exc:
            raise InstallError(f"comfyui requirements: {exc.message}", hint=exc.hint) from None
    state = load_state(root)
    state["comfyui_requirements"] = digest
    save_state(root, state)
    return True


def comfyui_python(manifest: Manifest, root: Path) -> Path:
    """The interpreter ComfyUI runs on: ``comfyui.python`` or ``ROOT/venv/bin/python``."""
    if manifest.comfyui.python:
        return Path(manifest.comfyui.python).expanduser()
    return root / "venv" / "bin" / "python"
