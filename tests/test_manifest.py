"""The manifest loader: the schema, field-path errors, folders, filenames — and, for random
invalid input, always a ManifestError (exit 2) with a field path, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.errors import ManifestError
from comfyfleet.manifest import load_manifest, parse_manifest

URL = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors"

FULL = f"""
version = 1

[comfyui]
repo = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.60"
path = "ComfyUI"
args = ["--listen", "0.0.0.0", "--port", "8190"]
extra_folders = ["animatediff_models"]

[download]
concurrency = 4
per_host = {{ "civitai.com" = 2 }}
stall_timeout = "30s"
min_speed = "256KiB"
file_timeout = "1h30m"
retries = 3

[[models]]
url = "{URL}"
folder = "vae"
sha256 = "{"AB" * 32}"
size = "1MiB"

[[models]]
url = "https://civitai.com/api/download/models/1"
folder = "animatediff_models"
required = false
mirrors = ["https://example.com/m.ckpt"]

[[nodes]]
repo = "https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved.git"
ref = "abc123"
critical = true
classes = ["ADE_AnimateDiffLoaderGen1"]

[validate]
strict = true
min_size = "100MiB"
require = {{ checkpoints = 1 }}

[[workflows]]
path = "workflows/x.json"
set = {{ "SaveImage.filename_prefix" = "out" }}
"""


def load_text(tmp_path: Path, text: str, name: str = "m.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_manifest(path)


def error_of(tmp_path: Path, text: str, name: str = "m.toml") -> str:
    with pytest.raises(ManifestError) as exc:
        load_text(tmp_path, text, name)
    assert exc.value.exit_code == 2
    return str(exc.value)


def test_a_full_manifest_loads_with_units_and_defaults(tmp_path):
    m = load_text(tmp_path, FULL)
    assert m.download.stall_timeout == 30 and m.download.min_speed == 256 * 1024
    assert m.download.file_timeout == 5400 and m.download.connections_per_file == 8
    assert m.models[0].size == 1024**2 and m.models[0].sha256 == "ab" * 32
    assert m.models[0].required and not m.models[1].required
    assert m.comfyui.port == 8190 and m.comfyui.listen == "127.0.0.1"
    assert m.nodes[0].name == "ComfyUI-AnimateDiff-Evolved"
    assert m.validate_.strict and m.validate_.require == {"checkpoints": 1}
    assert m.workflow_source(m.workflows[0]) == (tmp_path / "workflows/x.json").resolve()
    assert m.model_path(tmp_path, m.models[0], "a.safetensors") == (
        tmp_path / "ComfyUI/models/vae/a.safetensors"
    )


def test_yaml_is_accepted(tmp_path):
    m = load_text(tmp_path, f"version: 1\nmodels:\n  - url: {URL}\n    folder: unet\n", "m.yaml")
    assert m.models[0].key == "diffusion_models"


def test_unknown_folder_names_the_path_the_file_and_a_suggestion(tmp_path):
    entry = f'[[models]]\nurl = "{URL}"\nfolder = '
    text = entry + '"vae"\n' + entry + '"checkpoint"\n'
    msg = error_of(tmp_path, text)
    assert "m.toml" in msg and "models[1].folder" in msg and "did you mean 'checkpoints'" in msg


def test_extra_folders_make_node_folders_valid(tmp_path):
    text = f'[[models]]\nurl = "{URL}"\nfolder = "ipadapter"\n'
    assert "models[0].folder" in error_of(tmp_path, text)
    m = load_text(tmp_path, '[comfyui]\nextra_folders = ["ipadapter"]\n' + text)
    assert m.models[0].folder == "ipadapter"


def test_unknown_keys_are_errors_with_a_did_you_mean(tmp_path):
    msg = error_of(tmp_path, "[download]\nconcurency = 3\n")
    assert "download.concurency" in msg and "concurrency" in msg


@pytest.mark.parametrize(
    "name", ["../x.safetensors", "a/b.safetensors", "a\\\\b.ckpt", "..", "x..y"]
)
def test_path_like_filenames_are_rejected(tmp_path, name):
    msg = error_of(tmp_path, f'[[models]]\nurl = "{URL}"\nfolder = "vae"\nfilename = "{name}"\n')
    assert "models[0].filename" in msg


@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ('[[models]]\nurl = "ftp://x/y"\nfolder = "vae"\n', "models[0].url"),
        ('[[models]]\nfolder = "vae"\n', "models[0].url"),
        (f'[[models]]\nurl = "{URL}"\nfolder = "vae"\nsha256 = "abc"\n', "models[0].sha256"),
        (f'[[models]]\nurl = "{URL}"\nfolder = "vae"\nsize = "lots"\n', "models[0].size"),
        ('[download]\nstall_timeout = "soon"\n', "download.stall_timeout"),
        ("[download]\nconcurrency = 0\n", "download.concurrency"),
        ("[download]\nmin_speed = inf\n", "download.min_speed"),
        ("[download]\nfile_timeout = nan\n", "download.file_timeout"),
        ('[comfyui]\npath = "/abs"\n', "comfyui.path"),
        ("[validate]\nrequire = { checkpoint = 1 }\n", "validate.require.checkpoint"),
        ('[[workflows]]\npath = "w.json"\nset = { "prefix" = "x" }\n', "workflows[0].set"),
        ("version = 2\n", "version"),
    ],
)
def test_errors_carry_the_field_path(tmp_path, snippet, path):
    assert path in error_of(tmp_path, snippet)


def test_same_folder_and_filename_twice_is_an_error(tmp_path):
    entry = f'[[models]]\nurl = "{URL}"\nfolder = "vae"\nfilename = "a.safetensors"\n'
    assert "models[1].filename" in error_of(tmp_path, entry + entry)


def test_syntax_errors_and_missing_files(tmp_path):
    assert "invalid TOML" in error_of(tmp_path, "version = = 1")
    assert "invalid YAML" in error_of(tmp_path, "models: [", "m.yaml")
    assert "top level" in error_of(tmp_path, "- 1\n- 2\n", "m.yaml")
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "missing.toml")


# --- hostile names: folders, filenames, node names (issue 8) ----------------------------


@pytest.mark.parametrize(
    "folder", ["../../../root/.ssh", "/srv/x", "a/b", "..", "x\ny", "\u202eevil", "a\\b", ""]
)
def test_extra_folders_must_be_plain_names(folder):
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"comfyui": {"extra_folders": ["ipadapter", folder]}}, source="m.toml")
    assert "comfyui.extra_folders[1]" in str(exc.value)


@pytest.mark.parametrize("section", ["require", "warn"])
def test_validate_folder_keys_must_be_plain_names(section):
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"validate": {section: {"../checkpoints": 1}}}, source="m.toml")
    assert f"validate.{section}['../checkpoints']" in str(exc.value)


def test_a_model_folder_must_be_plain_even_when_listed_nowhere():
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"models": [{"url": URL, "folder": "../../etc"}]}, source="m.toml")
    assert "models[0].folder" in str(exc.value) and "plain name" in str(exc.value)


@pytest.mark.parametrize(
    "name",
    [
        "x\nPROVISIONING COMPLETE\nFATAL: y.safetensors",
        "a\rb.safetensors",
        "\x1b[31mred.safetensors",
        "cod\u202egnp.safetensors",
        "a\u2028b.safetensors",
        "a\x85next.safetensors",
        "é" * 120 + ".safetensors",  # 252 bytes: no room for .part.json
    ],
)
def test_filenames_with_controls_bidi_or_too_long_are_refused(name):
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"models": [{"url": URL, "folder": "vae", "filename": name}]})
    text = str(exc.value)
    assert "models[0].filename" in text
    assert "\n" not in text.split(" — ")[0] and "\u202e" not in text and "\x1b" not in text


def test_node_names_come_from_the_repo_or_an_explicit_name():
    m = parse_manifest(
        {
            "nodes": [
                {"repo": "https://github.com/a/ComfyUI-Foo.git"},
                {"repo": "https://github.com/b/ComfyUI-Foo", "name": "ComfyUI-Foo-b"},
                {"repo": "git@github.com:c/Bar.git"},
            ]
        }
    )
    assert [n.name for n in m.nodes] == ["ComfyUI-Foo", "ComfyUI-Foo-b", "Bar"]


def test_two_forks_with_one_folder_name_are_refused_with_the_fix():
    forks = [{"repo": "https://github.com/a/ComfyUI-Foo.git", "critical": True},
             {"repo": "https://github.com/b/comfyui-foo", "critical": True}]  # fmt: skip
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"nodes": forks}, source="m.toml")
    text = str(exc.value)
    assert exc.value.exit_code == 2
    assert "nodes[1].name" in text and "nodes[0]" in text and 'name = "comfyui-foo-2"' in text


@pytest.mark.parametrize(
    ("node", "where"),
    [
        ({"repo": "https://github.com/a/ComfyUI-Foo/sub/.."}, "nodes[0].name"),
        ({"repo": "https://github.com/a/.git"}, "nodes[0].name"),
        ({"repo": "https://github.com/a/x", "name": "../ComfyUI"}, "nodes[0].name"),
        ({"repo": "https://github.com/a/x", "name": "a\nFATAL: b"}, "nodes[0].name"),
        ({"repo": "https://github.com/a/x", "ref": "--upload-pack=touch /tmp/p"}, "nodes[0].ref"),
        ({"repo": "--config=x"}, "nodes[0].repo"),
        ({"repo": "https://github.com/a/x", "classes": ["A\nB"]}, "nodes[0].classes"),
    ],
)
def test_hostile_node_entries_are_refused(node, where):
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"nodes": [node]}, source="m.toml")
    assert where in str(exc.value)


# --- values that would crash later fail at load (issue 9) -------------------------------


@pytest.mark.parametrize(
    "args",
    [["--port", "81a88"], ["--port"], ["--port=0"], ["--port", "70000"], ["--listen"],
     ["--listen", "--port", "8188"], ["--extra\x00"]],
)  # fmt: skip
def test_comfyui_args_that_cannot_start_comfyui_are_refused(args):
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"comfyui": {"args": args}}, source="m.toml")
    assert "comfyui.args" in str(exc.value)


@pytest.mark.parametrize(
    "url",
    ["http://[::1/x", "http://h:99999/x", "http://h:port/x", "https:///x", "http://a b/c",
     "http://h/x\ny", "file:///etc/passwd", "hf://x/y"],
)  # fmt: skip
def test_urls_that_do_not_parse_are_refused(url):
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"models": [{"url": url, "folder": "vae"}]}, source="m.toml")
    assert "models[0].url" in str(exc.value)


def test_a_bad_url_error_shows_no_secret():
    bad = "http://user:hunter2pass@[::1/x?token=civ-secret-123"
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"models": [{"url": URL, "folder": "vae", "mirrors": [bad]}]})
    assert "models[0].mirrors" in str(exc.value)
    assert "hunter2pass" not in str(exc.value) and "civ-secret-123" not in str(exc.value)


@pytest.mark.parametrize("name", ["m.toml", "m.yaml"])
def test_five_thousand_levels_of_nesting_is_a_manifest_error(tmp_path, name):
    deep = "[" * 5000 + "]" * 5000
    text = f"x = {deep}\n" if name == "m.toml" else f"x: {deep}\n"
    assert "nested too deeply" in error_of(tmp_path, text, name)


def test_set_values_must_be_json_numbers():
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"workflows": [{"path": "w.json", "set": {"KSampler.cfg": float("nan")}}]})
    assert "workflows[0].set" in str(exc.value)


# --- property tests: random invalid input is always a clean ManifestError ---------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_section_keys = {
    "comfyui": ["repo", "ref", "path", "python", "install_requirements", "args", "extra_folders"],
    "download": ["concurrency", "connections_per_file", "per_host", "stall_timeout", "min_speed",
                 "file_timeout", "retries", "segment_size"],
    "validate": ["strict", "min_size", "require", "warn"],
}  # fmt: skip
_model_keys = ["url", "folder", "filename", "sha256", "size", "required", "mirrors", "urll"]


@st.composite
def manifests(draw):
    data = {}
    if draw(st.booleans()):
        data["version"] = draw(st.one_of(st.just(1), _values))
    for section, keys in _section_keys.items():
        if draw(st.booleans()):
            data[section] = draw(
                st.one_of(st.dictionaries(st.sampled_from(keys), _values, max_size=3), _values)
            )
    if draw(st.booleans()):
        model = st.dictionaries(st.sampled_from(_model_keys), _values, max_size=5)
        good = st.fixed_dictionaries(
            {"url": st.just(URL), "folder": st.sampled_from(["vae", "vea", "unet"])}
        )
        data["models"] = draw(st.one_of(st.lists(st.one_of(model, good), max_size=3), _values))
    if draw(st.booleans()):
        data[draw(st.sampled_from(["nodes", "workflows", "modles", "extra"]))] = draw(_values)
    return data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_random_manifests_load_or_fail_with_a_field_path(data):
    try:
        parse_manifest(data, source="m.toml")
    except ManifestError as exc:
        text = str(exc)
        assert exc.exit_code == 2
        assert text.startswith("m.toml: ")
        # every reported problem names where it is: "<path>: <what>"
        body = text.removeprefix("m.toml: ").split(" — ")[0]
        for line in [ln.strip() for ln in body.splitlines() if ln.strip()]:
            where, sep, what = line.partition(": ")
            assert (sep and where.strip() and what.strip()) or line.startswith(
                "the manifest must be"
            ), line


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_toml_text_never_raises_anything_but_manifest_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("m") / "m.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_manifest(path)
    except ManifestError as exc:
        assert str(exc).startswith(str(path))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_random_manifests_round_trip_through_toml_files(tmp_path_factory, data):
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):
        return  # not representable in TOML (None, mixed arrays): YAML covers those
    path = tmp_path_factory.mktemp("m") / "m.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_manifest(path)
    except ManifestError:
        pass


# --- property tests: hostile values in every field that names a path, a process or a URL ---

_SECRETS = ("hunter2pass", "civ-secret-123")
_nasty_chars = st.sampled_from(
    ["/", "\\", "..", ".", "\n", "\r", "\x00", "\x1b", "\x85", "\u202e", "\u2028", " ", "-",
     "PROVISIONING COMPLETE", "FATAL:", "é", "a", "Z", "_", ":", "@", "[", "%0A"]
)  # fmt: skip
_nasty = st.lists(_nasty_chars, min_size=0, max_size=6).map("".join) | st.text(max_size=10)
_hosts = st.sampled_from(
    ["huggingface.co", "civitai.com", "[::1", "[::1]", "h:99999", "h:x", "", "a b"]
)
_urls = st.builds(
    lambda scheme, user, host, path, token: f"{scheme}://{user}{host}/{path}{token}",
    st.sampled_from(["http", "https", "ftp", "file"]),
    st.sampled_from(["", "user:hunter2pass@", "hunter2pass@"]),
    _hosts,
    _nasty,
    st.sampled_from(["", "?token=civ-secret-123", "?X-Amz-Signature=civ-secret-123&a=1"]),
)
_folders = st.one_of(st.sampled_from(["vae", "ipadapter", "unet"]), _nasty)


@st.composite
def hostile_manifests(draw):
    extra = draw(st.lists(_folders, max_size=3))
    models = draw(st.lists(st.fixed_dictionaries(
        {"url": st.one_of(st.just(URL), _urls), "folder": _folders},
        optional={"filename": _nasty, "mirrors": st.lists(_urls, max_size=2)},
    ), max_size=3))  # fmt: skip
    repos = st.one_of(
        st.sampled_from(["https://github.com/a/Node.git", "https://github.com/b/node",
                         "https://github.com/a/Node/sub/..", "git@github.com:c/Node.git"]),
        _urls, _nasty,
    )  # fmt: skip
    node_keys = {"name": _nasty, "ref": _nasty, "classes": st.lists(_nasty, max_size=2)}
    nodes = draw(st.lists(st.fixed_dictionaries({"repo": repos}, optional=node_keys), max_size=3))
    args = draw(st.lists(st.one_of(st.sampled_from(["--port", "--listen", "--cpu"]), _nasty,
                                   st.integers(-5, 70000).map(str)), max_size=4))  # fmt: skip
    per_host = draw(st.dictionaries(st.one_of(_hosts, _nasty), st.integers(-1, 4), max_size=2))
    set_keys = st.one_of(st.just("SaveImage.filename_prefix"), _nasty)
    set_ = draw(
        st.dictionaries(set_keys, st.one_of(_nasty, st.floats(), st.integers()), max_size=2)
    )
    require = draw(st.dictionaries(_folders, st.integers(0, 3), max_size=2))
    return {
        "comfyui": {"extra_folders": extra, "args": args},
        "download": {"per_host": per_host},
        "models": models,
        "nodes": nodes,
        "validate": {"require": require, "warn": {}},
        "workflows": [{"path": "w.json", "set": set_}],
    }


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_manifests())
def test_hostile_values_load_only_as_plain_names_and_fail_without_secrets(data):
    import yarl

    from comfyfleet.names import plain_name

    try:
        m = parse_manifest(data, source="m.toml")
    except ManifestError as exc:
        text = str(exc)
        assert exc.exit_code == 2 and text.startswith("m.toml: ")
        assert not any(secret in text for secret in _SECRETS), text
        # a hostile value is shown escaped: it cannot break the message into forged lines
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e\u2028]", text), text
        return
    for folder in [*m.comfyui.extra_folders, *(e.folder for e in m.models),
                   *m.validate_.require]:  # fmt: skip
        assert plain_name(folder) == folder
    for entry in m.models:
        if entry.filename is not None:
            assert plain_name(entry.filename) == entry.filename
        for url in [entry.url, *entry.mirrors]:
            assert yarl.URL(url).host and url.split(":", 1)[0] in {"http", "https"}
    names = [plain_name(n.name) for n in m.nodes]
    assert len({n.casefold() for n in names}) == len(names)
    assert all(not (n.ref or "").startswith("-") and not n.repo.startswith("-") for n in m.nodes)
    assert 0 < m.comfyui.port < 65536
    assert all("\x00" not in a and "\n" not in a for a in m.comfyui.args)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[comfyui]\nargs = ["--port", "81a88"]\n', "comfyui.args"),
        ('[[models]]\nurl = "http://[::1/x"\nfolder = "vae"\n', "models[0].url"),
        ('[comfyui]\nextra_folders = ["../../../root/.ssh"]\n', "comfyui.extra_folders[0]"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
@pytest.mark.parametrize("command", ["provision", "download"])
def test_the_cli_refuses_at_load_with_exit_2_creating_nothing(tmp_path, text, where, command):
    import subprocess
    import sys

    man = tmp_path / "m.toml"
    man.write_text(text)
    root = tmp_path / "root"
    r = subprocess.run(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()", command, str(man),
         "--root", str(root)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert where in r.stderr and "Traceback" not in r.stderr
    assert not root.exists()  # no state dir, no sentinel, no log
