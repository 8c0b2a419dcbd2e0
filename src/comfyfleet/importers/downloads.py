"""What one download command line means: URL(s) and where they land.

Each reader takes a command's expanded arguments (after the program name) and returns the
downloads it performs, or raises :class:`Unmappable` saying why it cannot be imported. Option
tables follow each tool's manual: wget (``-O``, ``-P``), curl (``-o``, ``-O``,
``--output-dir``), aria2c (``-d``, ``-o``), ``hf download`` / ``huggingface-cli download``
(``--local-dir``, ``--revision``; the file keeps its repo path under the local dir), and
``comfy model download`` (``--url``, ``--relative-path``, ``--filename``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from comfyfleet.importers.folders import UNRESOLVED

URL = re.compile(r"^https?://")


class Unmappable(ValueError):
    """A command the importer understands but cannot turn into a manifest entry."""


@dataclass
class Download:
    """One file a command fetches: its URL, and a destination file or directory."""

    url: str
    #: the destination path as written (expanded); a directory when ``is_dir``
    path: str | None = None
    is_dir: bool = False
    #: the file's name when the tool sets it apart from the path (aria2c -o, curl -O)
    filename: str | None = None


def is_url(value: str) -> bool:
    """True for an http(s) URL (possibly holding unresolved variables)."""
    return bool(URL.match(value))


def _options(
    args: list[str], with_value: set[str], short_with_value: str = ""
) -> tuple[dict[str, str], list[str]]:
    """Split ``args`` into options (last value wins; flags map to "") and positionals."""
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1 :]
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and name in with_value and i + 1 < len(args):
                value = args[i + 1]
                i += 1
            opts[name] = value
        elif arg.startswith("-") and len(arg) > 1:
            if arg in with_value:  # multi-letter short options such as wget's -nc/-nv
                opts[arg] = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            else:
                letters = arg[1:]
                for k, letter in enumerate(letters):
                    if letter in short_with_value:
                        value = letters[k + 1 :]
                        if not value and i + 1 < len(args):
                            value = args[i + 1]
                            i += 1
                        opts["-" + letter] = value
                        break
                    opts["-" + letter] = ""
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def _urls(positional: list[str]) -> list[str]:
    urls = [p for p in positional if is_url(p) or p.startswith(UNRESOLVED)]
    if not urls:
        raise Unmappable("no URL in the command")
    return urls


def wget(args: list[str], cwd: str | None) -> list[Download]:
    """``wget [-O FILE | -P DIR] URL…``."""
    opts, pos = _options(
        args,
        {
            "--output-document",
            "--directory-prefix",
            "--header",
            "--user-agent",
            "--tries",
            "--timeout",
            "--output-file",
            "--append-output",
            "--input-file",
            "--execute",
            "--post-data",
            "--user",
            "--password",
            "-e",
        },
        short_with_value="OPoaUtTiewlDAQ",
    )
    if "-i" in opts or "--input-file" in opts:
        raise Unmappable("reads its URLs from a file (wget -i)")
    out = opts.get("-O", opts.get("--output-document"))
    if out == "-":
        raise Unmappable("writes to stdout (wget -O -), not to a file")
    urls = _urls(pos)
    if out is not None:
        if len(urls) > 1:
            raise Unmappable("several URLs into one -O file")
        return [Download(urls[0], out)]
    directory = opts.get("-P", opts.get("--directory-prefix")) or cwd
    return [Download(u, directory, is_dir=True) for u in urls]


def curl(args: list[str], cwd: str | None) -> list[Download]:
    """``curl [-L] -o FILE URL`` or ``curl -O [--output-dir DIR] URL``."""
    opts, pos = _options(
        args,
        {
            "--output",
            "--output-dir",
            "--header",
            "--user-agent",
            "--retry",
            "--data",
            "--request",
            "--user",
            "--max-time",
            "--connect-timeout",
            "--write-out",
            "--range",
            "--continue-at",
            "--config",
            "--url",
            "--retry-delay",
            "--retry-max-time",
        },
        short_with_value="oHAudXmwrCKe",
    )
    if "--url" in opts:
        pos.append(opts["--url"])
    urls = _urls(pos)
    out = opts.get("-o", opts.get("--output"))
    if out == "-" or (out is None and "-O" not in opts and "--remote-name" not in opts):
        raise Unmappable("writes to stdout (no -o/-O): not a file download")
    if out is not None:
        return [Download(urls[0], out)]
    directory = opts.get("--output-dir") or cwd
    return [Download(u, directory, is_dir=True) for u in urls]


def aria2c(args: list[str], cwd: str | None) -> list[Download]:
    """``aria2c [-d DIR] [-o NAME] URL``."""
    opts, pos = _options(
        args,
        {
            "--dir",
            "--out",
            "--header",
            "--input-file",
            "--max-connection-per-server",
            "--split",
            "--min-split-size",
            "--user-agent",
            "--console-log-level",
            "--summary-interval",
            "--max-concurrent-downloads",
        },
        short_with_value="doxskjiUtm",
    )
    if "-i" in opts or "--input-file" in opts:
        raise Unmappable("reads its URLs from a file (aria2c -i)")
    urls = _urls(pos)
    directory = opts.get("-d", opts.get("--dir")) or cwd
    name = opts.get("-o", opts.get("--out"))
    if name and "/" in name:  # -o may hold a relative path under -d
        directory = f"{directory or ''}/{name.rsplit('/', 1)[0]}"
        name = name.rsplit("/", 1)[1]
    return [Download(urls[0], directory, is_dir=True, filename=name or None)]


def hf_download(args: list[str], cwd: str | None) -> list[Download]:
    """``hf download REPO FILE… --local-dir DIR [--revision REV]`` (also huggingface-cli)."""
    opts, pos = _options(
        args,
        {
            "--local-dir",
            "--revision",
            "--repo-type",
            "--include",
            "--exclude",
            "--token",
            "--cache-dir",
            "--max-workers",
        },
    )
    if not pos:
        raise Unmappable("no repository named")
    repo, files = pos[0], pos[1:]
    if not files or "--include" in opts:
        raise Unmappable("downloads a whole repository or a pattern, not named files")
    local_dir = opts.get("--local-dir")
    if not local_dir:
        raise Unmappable("no --local-dir: the file lands in the Hugging Face cache, not ComfyUI")
    rev = opts.get("--revision") or "main"
    kind = {"dataset": "datasets/", "space": "spaces/"}.get(opts.get("--repo-type", ""), "")
    base = f"https://huggingface.co/{kind}{repo}/resolve/{quote(rev, safe='')}/"
    # hf keeps the file's path inside the repo under --local-dir
    return [Download(base + f, f"{local_dir.rstrip('/')}/{f}") for f in files]


def comfy_model_download(args: list[str], cwd: str | None) -> list[Download]:
    """``comfy model download --url URL --relative-path models/<folder> [--filename NAME]``."""
    opts, _ = _options(
        args,
        {
            "--url",
            "--relative-path",
            "--filename",
            "--set-hf-api-token",
            "--set-civitai-api-token",
            "--downloader",
        },
    )
    url = opts.get("--url")
    if not url:
        raise Unmappable("no --url")
    rel = opts.get("--relative-path")
    if not rel:
        raise Unmappable("no --relative-path: comfy-cli would ask for the folder")
    directory = rel if rel.startswith("/") else f"/ComfyUI/{rel}"
    return [Download(url, directory, is_dir=True, filename=opts.get("--filename") or None)]


@dataclass
class Clone:
    """``git clone URL [DIR]``."""

    url: str
    directory: str | None
    branch: str | None


def git_clone(args: list[str]) -> Clone:
    """The repository, target directory and ``-b`` branch of a ``git clone``."""
    opts, pos = _options(
        args,
        {
            "--branch",
            "--depth",
            "--config",
            "--origin",
            "--jobs",
            "--filter",
            "-c",
            "-b",
            "-o",
            "-j",
        },
    )
    if not pos:
        raise Unmappable("git clone without a repository")
    branch = opts.get("-b", opts.get("--branch")) or None
    return Clone(pos[0], pos[1] if len(pos) > 1 else None, branch)
