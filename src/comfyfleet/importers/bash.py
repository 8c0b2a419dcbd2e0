"""A provisioning script (bash) → what it downloads and clones, read statically.

The script is never run. :mod:`~comfyfleet.importers.shell` splits it into commands; this
module follows them in order, like a reader with a notepad:

- variables assigned in the script are expanded (``WORKSPACE``, ``COMFYUI_DIR`` and
  ``MODELS_DIR`` fall back to the defaults of ai-dock and Vast images);
- arrays are read in every style seen in the wild: bare URLs (ai-dock: the folder from the
  array's name or, first, from the ``provisioning_get_files DIR "${ARR[@]}"`` call that
  downloads it), ``"URL|DEST_PATH"`` (Vast's current scripts), ``"URL:SUBDIR:FILENAME"``, and
  associative ``["URL"]="filename"``;
- direct commands: wget, curl, aria2c, ``hf download`` / ``huggingface-cli download``,
  ``comfy model download``, a helper called with a URL and a directory (``download URL DIR``),
  ``git clone`` into ``custom_nodes``, and ``mv`` renames after a download;
- ``if [[ -n $HF_TOKEN ]]`` branches: the branch that needs the token is imported, the other
  is kept as a comment saying when it applies.

Whatever cannot be mapped is recorded with its line (:class:`~.result.Skipped`), so nothing
is dropped silently. Helpers' own bodies (``wget -O "$2" "$1"`` inside a function) are the
mechanism, not data, and are not reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from comfyfleet.importers import downloads
from comfyfleet.importers.downloads import Download, Unmappable, is_url
from comfyfleet.importers.elements import Element
from comfyfleet.importers.folders import (
    LEGACY_STORAGE,
    UNRESOLVED,
    Location,
    NotAModelPath,
    locate,
    looks_like_file,
    split_relative,
)
from comfyfleet.importers.result import (
    ImportedModel,
    ImportedNode,
    ImportResult,
    node_folder_problem,
)
from comfyfleet.importers.shell import (
    ArrayAssign,
    Command,
    HereDoc,
    Op,
    Word,
    array_ref,
    commands,
    expand,
    lex,
    readable,
    unquote,
)
from comfyfleet.importers.structure import BranchTag, Structure
from comfyfleet.importers.urls import clean_url
from comfyfleet.manifest import CORE_FOLDERS, FOLDER_ALIASES, check_filename
from comfyfleet.names import UnsafeName, plain_name

#: array name → ComfyUI folder key (ai-dock's names, and the usual variants)
ARRAY_FOLDERS: dict[str, str] = {
    "CHECKPOINT_MODELS": "checkpoints",
    "VAE_MODELS": "vae",
    "LORA_MODELS": "loras",
    "UNET_MODELS": "diffusion_models",
    "DIFFUSION_MODELS": "diffusion_models",
    "CLIP_MODELS": "text_encoders",
    "TEXT_ENCODER_MODELS": "text_encoders",
    "TEXT_ENCODERS": "text_encoders",
    "CLIP_VISION_MODELS": "clip_vision",
    "MOTION_MODELS": "animatediff_models",
    "CONTROLNET_MODELS": "controlnet",
    "ESRGAN_MODELS": "upscale_models",
    "UPSCALE_MODELS": "upscale_models",
    "LATENT_UPSCALE_MODELS": "latent_upscale_models",
    "EMBEDDINGS": "embeddings",
    "EMBEDDING_MODELS": "embeddings",
    "IPADAPTER_MODELS": "ipadapter",
    "GLIGEN_MODELS": "gligen",
    "STYLE_MODELS": "style_models",
    "HYPERNETWORK_MODELS": "hypernetworks",
}
#: words in other array names (CHECKPOINTS, FLUX_LORAS, …), most specific first
_NAME_WORDS: tuple[tuple[str, str], ...] = (
    ("LATENT_UPSCALE", "latent_upscale_models"), ("CLIP_VISION", "clip_vision"),
    ("TEXT_ENCODER", "text_encoders"), ("CHECKPOINT", "checkpoints"), ("CKPT", "checkpoints"),
    ("LORA", "loras"), ("VAE", "vae"), ("UNET", "diffusion_models"),
    ("DIFFUSION", "diffusion_models"), ("CONTROLNET", "controlnet"), ("ESRGAN", "upscale_models"),
    ("UPSCALE", "upscale_models"), ("EMBEDDING", "embeddings"), ("CLIP", "text_encoders"),
)  # fmt: skip
NODE_ARRAYS = frozenset({"NODES", "CUSTOM_NODES"})
#: arrays whose items have no manifest equivalent, and what to do instead
OTHER_ARRAYS: dict[str, str] = {
    "APT_PACKAGES": "apt packages: install them in the image",
    "PIP_PACKAGES": "pip packages: install them in the image, or let a node's requirements.txt",
    "WORKFLOWS": 'a workflow URL: download it and add [[workflows]] path = "…"',
}
#: the defaults of ai-dock and Vast images, used when the script does not assign them
DEFAULTS: dict[str, str] = {
    "WORKSPACE": "/workspace",
    "COMFYUI_DIR": "${WORKSPACE}/ComfyUI",
    "MODELS_DIR": "${COMFYUI_DIR}/models",
}
_SPECIAL_ONLY = re.compile(rf"^(?:{UNRESOLVED}(?:[@*#?!$-]|\d+|\$\(…\)|`…`){UNRESOLVED}|\s)*$")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?)=(.*)$", re.DOTALL)
_QUIET = frozenset({"echo", "printf", "log", "print", "printf_log", "mkdir", "chmod", "chown",
                    "cd", "source", ".", "sleep", "set", "shopt", "trap", "wait", "return",
                    "exit", "true", "false", "test", "[", "[[", "read", "shift", "unset",
                    "touch", "rm", "cp", "ln", "cat", "tee", "sed", "grep", "awk", "tr",
                    "basename", "dirname", "dos2unix", "sudo", "eval", "exec", "break",
                    "continue", "pushd", "popd"})  # fmt: skip
#: commands that run the command after them
_PREFIXES = frozenset({"sudo", "nohup", "nice", "ionice", "command", "exec", "env", "timeout",
                       "time", "stdbuf"})  # fmt: skip
_PACKAGE_TOOLS = frozenset({"pip", "pip3", "uv", "apt", "apt-get", "conda", "micromamba"})
_COMFY_REPOS = re.compile(r"github\.com/(comfyanonymous|Comfy-Org)/ComfyUI(\.git)?/?$", re.I)


@dataclass
class _Item:
    word: Word
    tag: BranchTag | None
    in_function: bool


@dataclass
class _Array:
    name: str
    line: int
    assoc: bool
    items: list[_Item] = field(default_factory=list)
    #: (directory as expanded, line of the call, tag) of each call that downloads it
    targets: list[tuple[str, int, BranchTag | None]] = field(default_factory=list)


@dataclass
class _Rename:
    line: int
    src: str
    dst: str
    text: str


@dataclass
class _Entry:
    model: ImportedModel
    tag: BranchTag | None
    at: int  # the line after which a rename may apply to it


class _Reader:
    def __init__(self, source: str) -> None:
        self.result = ImportResult(source)
        self.env: dict[str, str] = {}
        self.where = Structure()
        self.arrays: dict[str, _Array] = {}
        self.entries: list[_Entry] = []
        self.node_tags: list[tuple[ImportedNode, BranchTag | None]] = []
        self.renames: list[_Rename] = []
        self.cwd: str | None = None

    # --- variables ---------------------------------------------------------------------

    def lookup(self, name: str, _depth: int = 0) -> str | None:
        if name in self.env:
            return self.env[name]
        if name in DEFAULTS and _depth < 5:
            return expand(DEFAULTS[name], lambda n: self.lookup(n, _depth + 1))
        return None

    def x(self, word: Word | str) -> str:
        return expand(word.raw if isinstance(word, Word) else word, self.lookup)

    # --- the walk ----------------------------------------------------------------------

    def read(self, text: str) -> ImportResult:
        items = list(commands(lex(text)))
        for i, item in enumerate(items):
            if isinstance(item, ArrayAssign):
                self.array(item)
            elif isinstance(item, HereDoc):
                self.heredoc(item)
            elif isinstance(item, Op):
                prev = items[i - 1] if i else None
                if item.text == "(" and isinstance(prev, Command) and len(prev.words) == 1:
                    nxt = items[i + 1] if i + 1 < len(items) else None
                    if isinstance(nxt, Op) and nxt.text == ")":
                        self.where.pending_function = True
            else:
                self.command(item)
        return self.finish()

    def heredoc(self, doc: HereDoc) -> None:
        """A here-document is a file the script writes, not commands: named when it matters."""
        where = f"here-document, lines {doc.start}-{doc.end}"
        if _is_workflow(doc.body):
            self.result.skip(doc.start, where, "an embedded ComfyUI workflow: save it as a "
                             ".json file, run comfyfleet import on it, and add it as "
                             "[[workflows]]")  # fmt: skip
        elif "http://" in doc.body or "https://" in doc.body:
            why = "holds URLs the script writes to a file (not read); add what it fetches by hand"
            self.result.skip(doc.start, where, why)

    def command(self, cmd: Command) -> None:
        words = cmd.words
        first = unquote(words[0].raw)
        if first in ("then", "else", "do", "elif", "if", "while", "until", "for", "case",
                     "function", "{", "}", "fi", "done", "esac", "!", "time"):  # fmt: skip
            words, loop_var = self.where.keyword(first, cmd)
            if loop_var:
                self.env[loop_var[0]] = loop_var[1]
            if not words:
                return
            first = unquote(words[0].raw)
            cmd = Command(words, words[0].line)
        if first in ("export", "local", "declare", "typeset", "readonly"):
            words = [w for w in words[1:] if not unquote(w.raw).startswith("-")]
            for w in words:
                if _ASSIGNMENT.match(w.raw):
                    self.assign(w)
            return
        while words and _ASSIGNMENT.match(words[0].raw):
            self.assign(words[0])
            words = words[1:]
        if words:
            self.run(Command(words, words[0].line))

    def assign(self, word: Word) -> None:
        m = _ASSIGNMENT.match(word.raw)
        assert m
        value = self.x(m[3])
        self.env[m[1]] = (self.env.get(m[1], "") + value) if m[2] else value
        if "WORKFLOW" in m[1].upper() and is_url(value) and not self.where.in_function:
            self.result.skip(word.line, word.raw, OTHER_ARRAYS["WORKFLOWS"])

    # --- arrays ------------------------------------------------------------------------

    def array(self, a: ArrayAssign) -> None:
        flags = "".join(unquote(w.raw) for w in a.prefix if w.raw.startswith("-"))
        values = [self.x(w) for w in a.items]
        if values and all(_SPECIAL_ONLY.match(v) for v in values):
            return  # arr=("$@"), pids+=($!): a function's own bookkeeping
        arr = self.arrays.get(a.name)
        if arr is None or not a.append:
            assoc = "A" in flags or any(re.match(r"^\[.+\]=", w.raw) for w in a.items)
            arr = _Array(a.name, a.line, assoc)
            self.arrays[a.name] = arr
        arr.items += [_Item(w, self.where.tag, self.where.in_function) for w in a.items]

    # --- commands ----------------------------------------------------------------------

    def run(self, cmd: Command) -> None:
        words = list(cmd.words)
        while len(words) > 1 and unquote(words[0].raw).rsplit("/", 1)[-1] in _PREFIXES:
            # sudo wget …, nohup aria2c …, timeout 600 hf download …: the command that runs
            words = words[1:]
            while len(words) > 1 and re.match(r"^(-|\d|[A-Za-z_]\w*=)", words[0].raw):
                words = words[1:]
        cmd = Command(words, cmd.line)
        args = [self.x(w) for w in cmd.words]
        name = args[0].rsplit("/", 1)[-1]
        text = " ".join(w.raw for w in cmd.words)
        rest = args[1:]
        if name == "cd" and rest:
            self.cwd = rest[0]
            return
        if name == "mv":
            paths = [a for a in rest if not a.startswith("-")]
            if len(paths) == 2:
                self.renames.append(_Rename(cmd.line, paths[0], paths[1], text))
            return
        try:
            if name == "git" and rest[:1] == ["clone"]:
                self.clone(cmd, rest[1:], text)
                return
            if name == "git" and "checkout" in rest:
                self.checkout(rest)
                return
            reader = {
                "wget": downloads.wget,
                "curl": downloads.curl,
                "aria2c": downloads.aria2c,
            }.get(name)
            if name in ("hf", "huggingface-cli") and rest[:1] == ["download"]:
                reader, rest = downloads.hf_download, rest[1:]
            if name == "comfy" and rest[:2] == ["model", "download"]:
                reader, rest = downloads.comfy_model_download, rest[2:]
            if reader is not None:
                for dl in reader(rest, self.cwd):
                    self.download(dl, cmd, text)
                return
        except Unmappable as exc:
            if not self.helper(args):
                self.result.skip(cmd.line, text, str(exc))
            return
        if name in _PACKAGE_TOOLS and "install" in rest:
            if not self.helper(args):  # a helper's pip install "$requirements" is machinery
                self.result.skip(cmd.line, text, "a package install: install it in the image")
            return
        self.generic(cmd, name, args, text)

    def helper(self, args: list[str]) -> bool:
        """True when a command is a helper's own machinery (inside a function or a loop, with
        values only known at call time): not data, and not reported."""
        return (self.where.in_function or self.where.in_loop) and any(UNRESOLVED in a for a in args)

    def generic(self, cmd: Command, name: str, args: list[str], text: str) -> None:
        """A helper call: ``download URL DIR``, ``provisioning_get_files DIR "${ARR[@]}"``."""
        refs = [array_ref(w.raw) for w in cmd.words[1:]]
        paths = [
            a
            for a, ref in zip(args[1:], refs, strict=True)
            if ref is None and "/" in a and not is_url(a) and not a.startswith(UNRESOLVED + "@")
        ]
        urls = [a for a in args[1:] if is_url(a)]
        arrays = [
            ref or a[2:-1]
            for a, ref in zip(args[1:], refs, strict=True)
            if ref or (a.startswith(UNRESOLVED + "@") and a.endswith(UNRESOLVED))
        ]
        if arrays and len(paths) == 1:
            for ref in arrays:
                arr = self.arrays.get(ref)
                if arr is not None:
                    arr.targets.append((paths[0], cmd.line, self.where.tag))
            return
        if urls and name not in _QUIET:
            if len(paths) == 1:
                for url in urls:
                    is_file = looks_like_file(paths[0])
                    self.download(Download(url, paths[0], is_dir=not is_file), cmd, text)
                return
            if not self.helper(args):
                why = "a URL passed to a command the importer does not know"
                self.result.skip(cmd.line, text, why + " (add it by hand)")

    # --- turning commands into entries ---------------------------------------------------

    def download(self, dl: Download, cmd: Command, text: str) -> None:
        if dl.url.startswith(UNRESOLVED + "@"):  # for url in "${ARR[@]}"; do wget -P DIR "$url"
            arr = self.arrays.get(dl.url[2:-1])
            if arr is not None and dl.path and dl.is_dir:
                arr.targets.append((dl.path, cmd.line, self.where.tag))
                return
        url, notes = clean_url(dl.url)
        if url is None:
            if not self.helper([dl.url, dl.path or ""]):
                self.result.skip(cmd.line, text, "; ".join(notes))
            return
        if not dl.path:
            self.result.skip(cmd.line, text, "no destination directory (the current "
                             "directory is not known at this point)")  # fmt: skip
            return
        path, computed = dl.path, False
        head, _, name = path.rpartition("/")
        if not dl.is_dir and UNRESOLVED in name and UNRESOLVED not in head:
            # -O "$DIR/$(basename "$url")": the name is computed, the folder is not
            path, computed = head, True
        try:
            loc = locate(path, is_file=not dl.is_dir and not computed)
        except NotAModelPath as exc:
            if not self.helper([dl.path]):
                self.result.skip(cmd.line, text, f"{exc}: {readable(dl.path)}")
            return
        if computed:
            notes = [*notes, f"the script computes the file name ({readable(name)}); the "
                     "downloader's name (the URL's, or the server's) is used"]  # fmt: skip
        filename = dl.filename or loc.filename
        self.add(url, loc, filename, notes, cmd.line, self.where.tag, cmd.line)

    def add(
        self,
        url: str,
        loc: Location,
        filename: str | None,
        notes: list[str],
        line: int,
        tag: BranchTag | None,
        at: int,
    ) -> None:
        notes = list(notes)
        if filename is not None:
            try:
                check_filename(plain_name(filename, what="filename"))
            except ValueError as exc:  # UnsafeName is a ValueError too
                self.result.skip(line, f"{readable(url)} → {filename}", f"refused: {exc}")
                return
        if loc.node_folder:
            notes.append(f"{loc.folder!r} is not a ComfyUI core folder: a custom node "
                         "registers it (listed in comfyui.extra_folders)")  # fmt: skip
        model = ImportedModel(url, loc.folder, filename, loc.subfolder, notes=notes, line=line)
        self.entries.append(_Entry(model, tag, at))

    def clone(self, cmd: Command, args: list[str], text: str) -> None:
        clone = downloads.git_clone(args)
        repo, notes = clean_url(clone.url)
        if repo is None:
            if not self.helper([clone.url, clone.directory or ""]):
                self.result.skip(cmd.line, text, "; ".join(notes))
            return
        if _COMFY_REPOS.search(repo):
            self.result.skip(cmd.line, text, 'ComfyUI itself: set [comfyui] repo = "…" and '
                             "ref; comfyfleet installs it")  # fmt: skip
            return
        target = clone.directory or ""
        if clone.directory is None and self.cwd and "custom_nodes" in self.cwd.split("/"):
            target = f"{self.cwd}/{repo.rstrip('/').rsplit('/', 1)[-1].removesuffix('.git')}"
        parts = target.split("/")
        if (clone.directory is not None or self.cwd) and (
            len(parts) < 2 or parts[-2] != "custom_nodes"
        ):
            if not self.helper([target]):
                self.result.skip(cmd.line, text, "clones somewhere other than custom_nodes/")
            return
        problem = node_folder_problem(repo)
        if problem:
            self.result.skip(cmd.line, text, problem)
            return
        node = ImportedNode(repo=repo, ref=clone.branch, notes=notes, line=cmd.line)
        folder = parts[-1] if target else ""
        tail = repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        node.folder = folder if folder and UNRESOLVED not in folder else tail
        try:
            plain_name(node.folder, what="node folder")
        except UnsafeName as exc:
            self.result.skip(cmd.line, text, f"refused: {exc}")
            return
        if node.folder != tail:
            node.notes.append(f"the script clones it into custom_nodes/{node.folder}")
        if not clone.branch:
            node.notes.append('unpinned: the script installed the default branch; add ref = "…"')
        self.node_tags.append((node, self.where.tag))

    def checkout(self, args: list[str]) -> None:
        """``git -C custom_nodes/X checkout REF`` (or after ``cd``) pins the node cloned there."""
        where = args[args.index("-C") + 1] if "-C" in args else self.cwd
        ref = args[args.index("checkout") + 1] if args.index("checkout") + 1 < len(args) else ""
        if not where or not ref or ref.startswith("-") or UNRESOLVED in ref:
            return
        folder = where.rstrip("/").rsplit("/", 1)[-1]
        for node, _tag in self.node_tags:
            if node.folder == folder:
                node.ref = ref
                node.notes = [n for n in node.notes if not n.startswith("unpinned")]

    # --- the end: arrays, renames, token branches ---------------------------------------

    def finish(self) -> ImportResult:
        for arr in self.arrays.values():
            self.resolve_array(arr)
        self.apply_renames()
        res = self.result
        for entry in sorted(self.entries, key=lambda e: e.model.line):
            self.mark_branch(entry.model, entry.tag)
            res.models.append(entry.model)
        for node, tag in self.node_tags:
            self.mark_branch(node, tag)
            res.nodes.append(node)
        res.skipped.sort(key=lambda s: s.line)
        return res

    def mark_branch(self, thing: ImportedModel | ImportedNode, tag: BranchTag | None) -> None:
        if tag is None or tag.needs_token or tag.if_id not in self.where.token_ifs:
            return
        thing.commented = (
            f"applies when {tag.var} is not set (the script's other branch, line {tag.line}); "
            "the entry that needs the token is imported instead"
        )

    def resolve_array(self, arr: _Array) -> None:
        if arr.name in NODE_ARRAYS:
            for item in arr.items:
                repo, notes = clean_url(self.x(item.word))
                problem = node_folder_problem(repo) if repo else "; ".join(notes)
                if repo is None or problem:
                    self.result.skip(item.word.line, item.word.raw, problem or "")
                    continue
                notes.append('unpinned: the script installed the default branch; add ref = "…"')
                self.node_tags.append(
                    (ImportedNode(repo=repo, notes=notes, line=item.word.line), item.tag)
                )
            return
        if arr.name in OTHER_ARRAYS:
            for item in arr.items:
                self.result.skip(item.word.line, f"{arr.name}: {readable(self.x(item.word))}",
                                 OTHER_ARRAYS[arr.name])  # fmt: skip
            return
        targets: list[tuple[Location, int, BranchTag | None]] = []
        for path, line, tag in arr.targets:
            try:
                targets.append((locate(path, is_file=False), line, tag))
            except NotAModelPath as exc:
                self.result.skip(line, f"{arr.name} → {readable(path)}", str(exc))
        by_name = ARRAY_FOLDERS.get(arr.name) or folder_from_name(arr.name)
        if not targets and by_name:
            targets = [(Location(by_name), arr.line, None)]
        for item in arr.items:
            self.array_item(arr, item, targets)

    def array_item(
        self, arr: _Array, item: _Item, targets: list[tuple[Location, int, BranchTag | None]]
    ) -> None:
        word = item.word
        value = self.x(word)
        m = re.match(r"^\[(.+?)\]=(.*)$", word.raw, re.DOTALL) if arr.assoc else None
        element = Element.of_pair(self.x(m[1]), self.x(m[2])) if m else Element.of_value(value)
        url, dest, rel, filename = element.url, element.dest, element.rel, element.filename
        shown = f"{arr.name}: {readable(value)}"
        clean, notes = clean_url(url)
        if clean is None:
            if not (item.in_function and UNRESOLVED in value):
                self.result.skip(word.line, shown, "; ".join(notes))
            return
        tag = item.tag
        try:
            if dest is not None:
                is_file = not dest.endswith("/")
                loc = locate(dest, is_file=is_file)
                self.add(clean, loc, filename or loc.filename, notes, word.line, tag, word.line)
                return
            if rel is not None:
                first = rel.replace("\\", "/").strip("/").split("/")[0]
                known = first in CORE_FOLDERS or first in FOLDER_ALIASES or first in LEGACY_STORAGE
                if known or not targets:
                    loc = split_relative(f"{rel}/{filename}", is_file=True)
                    self.add(clean, loc, loc.filename, notes, word.line, tag, word.line)
                    return
                for target, line, ttag in targets:  # SUBDIR inside the array's folder
                    sub = "/".join(p for p in (target.subfolder, rel.strip("/")) if p)
                    loc = split_relative(f"{target.folder}/{sub}/{filename}", is_file=True)
                    self.add(clean, loc, loc.filename, notes, word.line, tag or ttag, line)
                return
        except NotAModelPath as exc:
            self.result.skip(word.line, shown, str(exc))
            return
        if not targets:
            why = (
                "no ComfyUI model folder for this array (no download call names its "
                "directory, and its name is not a known one)"
            )
            self.result.skip(word.line, shown, why)
            return
        for target, line, ttag in targets:
            self.add(clean, target, filename, notes, word.line, tag or ttag, line)

    def apply_renames(self) -> None:
        for rename in sorted(self.renames, key=lambda r: r.line):
            try:
                src = locate(rename.src, is_file=True)
            except NotAModelPath:
                continue  # not a model file: not ours to follow
            matches = [
                e
                for e in self.entries
                if e.at <= rename.line
                and e.model.folder == src.folder
                and e.model.subfolder == src.subfolder
                and e.model.destination[2] == src.filename
            ]
            if not matches:
                self.result.skip(rename.line, rename.text, "renames a file the importer did "
                                 "not see downloaded")  # fmt: skip
                continue
            try:
                is_file = not rename.dst.endswith("/") and looks_like_file(rename.dst)
                dst = locate(rename.dst, is_file=is_file)
            except NotAModelPath as exc:
                self.result.skip(rename.line, rename.text, f"moves it out of the model folders "
                                 f"({exc})")  # fmt: skip
                continue
            for entry in matches:
                entry.model.folder = dst.folder
                entry.model.subfolder = dst.subfolder
                entry.model.filename = dst.filename or entry.model.destination[2]
                entry.model.notes.append(f"renamed by the script's mv (line {rename.line})")


def _is_workflow(body: str) -> bool:
    """True when a here-document's text is a ComfyUI workflow (UI or API format)."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return True
    return isinstance(data, dict) and any(
        isinstance(v, dict) and "class_type" in v for v in data.values()
    )


def folder_from_name(name: str) -> str | None:
    """The folder an array's name suggests (``FLUX_LORAS`` → ``loras``), when it names one."""
    upper = name.upper()
    return next((folder for word, folder in _NAME_WORDS if word in upper), None)


def import_bash_script(text: str, source: str = "script") -> ImportResult:
    """Read a provisioning script statically; what it downloads, clones and what was skipped."""
    # NUL cannot occur in a bash string; it marks unresolved variables here, so a stray one
    # becomes another control character, which the plain-name rule refuses
    # CRLF: scripts saved on Windows (ai-dock runs dos2unix on them before running them)
    text = text.replace("\r\n", "\n").replace(UNRESOLVED, "\x01")
    return _Reader(source).read(text)
