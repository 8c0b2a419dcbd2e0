"""The manifest loader: the schema, field-path errors, folders, filenames — and, for random
invalid input, always a ManifestError (exit 2) with a field path, never a traceback."""

from __future__ import annotations

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
