"""Local git repositories for tests and ``comfyfleet demo``: a stand-in ComfyUI and custom nodes.

Each builder writes a small tree, commits it, and publishes it as a bare repository; the
returned :class:`LocalRepo` has the ``file://`` URL a manifest points at. Nothing here touches
the network: node requirements that need a package use ``--no-index --find-links`` to a
directory of wheels this module builds (:func:`build_wheel`), including a tiny fake ``torch``
— never the real multi-GB one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

STANDIN_DIR = Path(__file__).parent / "standin"
#: model folders that get a ``put_<key>_here`` placeholder, as in ComfyUI's repository
_PLACEHOLDER_FOLDERS = (
    "checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusion_models",
    "embeddings", "loras", "text_encoders", "unet", "upscale_models", "vae", "vae_approx",
)  # fmt: skip

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "comfyfleet tests",
    "GIT_AUTHOR_EMAIL": "tests@comfyfleet.invalid",
    "GIT_COMMITTER_NAME": "comfyfleet tests",
    "GIT_COMMITTER_EMAIL": "tests@comfyfleet.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass
class LocalRepo:
    """A bare repository on disk and the working tree it was built from."""

    bare: Path
    work: Path
    tag: str | None

    @property
    def url(self) -> str:
        """The ``file://`` URL of the bare repository."""
        return self.bare.as_uri()

    @property
    def commit(self) -> str:
        """The commit at the tip of the default branch."""
        return _git(self.bare, "rev-parse", "HEAD").strip()

    def commit_files(
        self, files: dict[str, str | bytes], *, message: str, tag: str | None = None
    ) -> str:
        """Add a commit (and optionally a tag) and push it; return the new commit."""
        _write_tree(self.work, files)
        _commit(self.work, message, tag)
        _git(self.work, "push", "-q", "--tags", "origin", "HEAD:main")
        if tag:
            self.tag = tag
        return _git(self.work, "rev-parse", "HEAD").strip()


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    out = subprocess.run(
        ["git", "-C", str(cwd), *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


def _write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _commit(work: Path, message: str, tag: str | None) -> None:
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", message)
    if tag:
        _git(work, "tag", "-f", tag)


def make_repo(
    base: Path, name: str, files: dict[str, str | bytes], *, tag: str | None = "v1.0.0"
) -> LocalRepo:
    """Commit ``files`` in ``base/work/<name>`` and publish ``base/<name>.git``."""
    work = base / "work" / name
    bare = base / f"{name}.git"
    if work.exists():
        shutil.rmtree(work)
    if bare.exists():
        shutil.rmtree(bare)
    work.mkdir(parents=True)
    _git(work, "init", "-q", "-b", "main")
    _write_tree(work, files)
    _commit(work, f"{name}: initial commit", tag)
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, capture_output=True
    )
    _git(work, "remote", "add", "origin", str(bare))
    return LocalRepo(bare=bare, work=work, tag=tag)


def comfyui_files() -> dict[str, str | bytes]:
    """The stand-in ComfyUI source tree (from the packaged template)."""
    files: dict[str, str | bytes] = {}
    for path in STANDIN_DIR.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(STANDIN_DIR).as_posix()
            files[".gitignore" if rel == "gitignore.template" else rel] = path.read_bytes()
    for folder in _PLACEHOLDER_FOLDERS:
        files[f"models/{folder}/put_{folder}_here"] = b""
    files["custom_nodes/example_node.py.example"] = "# custom nodes go in this directory\n"
    return files


def make_comfyui_repo(base: Path, *, tag: str = "v0.3.60-standin") -> LocalRepo:
    """A bare git repo of the stand-in ComfyUI, tagged ``tag``."""
    return make_repo(base, "ComfyUI", comfyui_files(), tag=tag)


def node_files(
    classes: list[str],
    *,
    requirements: str = "",
    install_py: str | None = None,
    import_error: str | None = None,
    imports: list[str] | None = None,
    extra_folders: list[str] | None = None,
) -> dict[str, str | bytes]:
    """Files of a custom node package defining ``classes`` in NODE_CLASS_MAPPINGS.

    ``import_error``: the module raises this at import (ComfyUI logs IMPORT FAILED);
    ``imports``: modules it imports (so a missing requirement fails the import);
    ``extra_folders``: model folder keys it registers under ``models/<key>``.
    """
    lines = ["import os", "", "import folder_paths", ""]
    lines += [f"import {m}  # noqa: F401" for m in imports or []]
    if import_error:
        lines.append(f"raise ImportError({import_error!r})")
    for key in extra_folders or []:
        lines.append(
            f"folder_paths.add_model_folder_path({key!r}, "
            f"os.path.join(folder_paths.models_dir, {key!r}))"
        )
    for cls in classes:
        lines += [
            "",
            f"class {cls}:",
            "    @classmethod",
            "    def INPUT_TYPES(cls):",
            '        return {"required": {"value": ("STRING", {"default": ""})}}',
            "",
            '    RETURN_TYPES = ("STRING",)',
            '    FUNCTION = "run"',
            '    CATEGORY = "standin"',
            "",
            "    def run(self, value):",
            "        return (value,)",
        ]
    mapping = ", ".join(f"{c!r}: {c}" for c in classes)
    lines += ["", f"NODE_CLASS_MAPPINGS = {{{mapping}}}", ""]
    files: dict[str, str | bytes] = {"__init__.py": "\n".join(lines), "README.md": "a test node\n"}
    if requirements:
        files["requirements.txt"] = requirements
    if install_py is not None:
        files["install.py"] = install_py
    return files


def make_node_repo(
    base: Path, name: str, classes: list[str], *, tag: str | None = "v1.0.0", **kw
) -> LocalRepo:
    """A bare git repo of a custom node (see :func:`node_files` for the options)."""
    return make_repo(base, name, node_files(classes, **kw), tag=tag)


def offline_requirements(wheels: Path, *requirements: str) -> str:
    """A requirements.txt that pip resolves from ``wheels`` only (never the network)."""
    return f"--no-index\n--find-links {wheels}\n" + "".join(f"{r}\n" for r in requirements)


def build_wheel(dest: Path, name: str, version: str, modules: dict[str, str] | None = None) -> Path:
    """Write a minimal pure-Python wheel ``name==version`` into ``dest``; return its path.

    Built with :mod:`zipfile` (a wheel is a zip with METADATA, WHEEL and RECORD), so neither
    ``wheel`` nor network access is needed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    modules = modules or {f"{dist}/__init__.py": f'__version__ = "{version}"\n'}
    info = f"{dist}-{version}.dist-info"
    files = dict(modules)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: comfyfleet.testing\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def build_test_wheels(dest: Path) -> Path:
    """The wheel directory the test nodes install from: fake torch 1.0.0 and 2.0.0, a helper."""
    build_wheel(dest, "torch", "1.0.0")
    build_wheel(dest, "torch", "2.0.0")
    build_wheel(dest, "standin-helper", "0.1.0")
    return dest


def make_venv(dest: Path, *, wheels: Path | None = None, packages: tuple[str, ...] = ()) -> Path:
    """A venv seeing system site-packages, ``packages`` installed from ``wheels``; its python."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(dest)],
        check=True,
        capture_output=True,
    )
    python = dest / "bin" / "python"
    if packages:
        assert wheels is not None
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--find-links",
                str(wheels),
                *packages,
            ],
            check=True,
            capture_output=True,
        )
    return python


def textblock(text: str) -> str:
    """Dedent a code block for a file written by a test."""
    return textwrap.dedent(text).lstrip()
