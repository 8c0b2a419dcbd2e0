"""What the agent uploads: a wheel of the running comfyfleet and a wheelhouse of its
dependencies for the instance's platform and Python, built once and cached here.

The wheel is made from the package directory that is running now (an editable install
included), so an instance runs exactly the code of its control plane. It is byte-for-byte
reproducible (sorted entries, fixed timestamps): its sha256 names the instance's agent venv,
which is therefore reused until the code changes. The dependencies come from
``pip download --only-binary=:all: --platform … --python-version …``: the instance then
installs with no package index at all (``PIP_NO_INDEX=1`` holds there).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from comfyfleet.errors import ComfyfleetError

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class WheelhouseError(ComfyfleetError):
    """The wheel or the dependency wheelhouse could not be built."""


@dataclass(frozen=True)
class InstancePlatform:
    """What the instance's interpreter runs on: ``(3, 11)``, ``x86_64``, glibc ``(2, 36)``."""

    python: tuple[int, int]
    machine: str
    glibc: tuple[int, int]

    @property
    def platform_tags(self) -> list[str]:
        """Every manylinux tag this glibc accepts, newest first (pip does not expand them)."""
        arch = self.machine
        major, minor = self.glibc
        if major != 2 or minor < 17:
            raise WheelhouseError(
                f"glibc {major}.{minor} on the instance is too old (manylinux2014 needs 2.17)"
            )
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
        return [*tags, f"manylinux2014_{arch}", f"manylinux_2_12_{arch}",
                f"manylinux2010_{arch}", f"manylinux_2_5_{arch}", f"manylinux1_{arch}"]  # fmt: skip

    @property
    def key(self) -> str:
        """A directory name for this platform's wheelhouse."""
        py = f"cp{self.python[0]}{self.python[1]}"
        return f"{py}-{self.machine}-glibc{self.glibc[0]}.{self.glibc[1]}"


@dataclass(frozen=True)
class Wheel:
    """The running comfyfleet as a wheel: where it is, its version and sha256."""

    path: Path
    version: str
    sha256: str


@dataclass(frozen=True)
class Wheelhouse:
    """A directory of wheels that installs ``comfyfleet==version`` with no index."""

    path: Path
    files: tuple[Path, ...]


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/comfyfleet`` (default ``~/.cache/comfyfleet``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfyfleet"


_BUILT: dict[Path, Wheel] = {}


def running_wheel(cache: Path | None = None) -> Wheel:
    """Build (or reuse) the wheel of the comfyfleet package running in this process."""
    # the package does not change under a running process: zip it once per process, not at
    # every instance's install (it was a tenth of the control plane's CPU while filling)
    cache = cache or default_cache()
    built = _BUILT.get(cache)
    if built is not None and built.path.is_file():
        return built
    _BUILT[cache] = wheel = _build_running_wheel(cache)
    return wheel


def _build_running_wheel(cache: Path) -> Wheel:
    import comfyfleet

    dist = metadata.distribution("comfyfleet")
    version = dist.version
    package = Path(comfyfleet.__file__).parent
    info = f"comfyfleet-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"comfyfleet/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    files[f"{info}/METADATA"] = (dist.read_text("METADATA") or "").encode()
    files[f"{info}/entry_points.txt"] = (dist.read_text("entry_points.txt") or "").encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: comfyfleet.fleet.wheelhouse\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{name},sha256={_b64sha(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, _EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    dest = cache / "wheels" / digest[:16]
    path = dest / f"comfyfleet-{version}-py3-none-any.whl"
    if not path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return Wheel(path, version, digest)


def requirements() -> list[str]:
    """comfyfleet's own dependencies (no extras), as pip requirement strings."""
    reqs = metadata.requires("comfyfleet") or []
    return [r for r in reqs if "extra ==" not in r.replace("extra==", "extra ==")]


async def build_wheelhouse(platform: InstancePlatform, cache: Path | None = None) -> Wheelhouse:
    """The dependency wheels for ``platform`` (plus pip, to install without ensurepip),
    downloaded once per platform and requirement set, then reused."""
    reqs = sorted(requirements())
    tags = platform.platform_tags
    key = hashlib.sha256(json.dumps([reqs, tags, platform.python]).encode()).hexdigest()[:12]
    dest = (cache or default_cache()) / "wheelhouse" / f"{platform.key}-{key}"
    if not (dest / ".complete").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        major, minor = platform.python
        argv = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", f"{major}.{minor}",
            "--implementation", "cp", "--abi", f"cp{major}{minor}", "--abi", "abi3",
            "--abi", "none", *[a for t in tags for a in ("--platform", t)],
            "--dest", str(tmp), *reqs, "pip",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = out.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise WheelhouseError(
                f"pip download of comfyfleet's dependencies for {platform.key} failed: "
                + " / ".join(tail),
                hint="the control plane needs a package index (or PIP_FIND_LINKS) once; "
                "the result is cached under " + str(dest.parent),
            )
        (tmp / ".complete").write_text("\n".join(reqs) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    files = tuple(sorted(p for p in dest.iterdir() if p.suffix == ".whl"))
    return Wheelhouse(dest, files)


def _b64sha(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
