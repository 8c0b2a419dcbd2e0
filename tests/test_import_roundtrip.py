"""The round-trip property: whatever the input, every manifest `import` emits is accepted by
load_manifest, and no two live entries share a destination (folder, subfolder, name)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.importers import import_bash_script, render
from comfyfleet.importers.workflow import import_workflow
from comfyfleet.manifest import canonical_folder, load_manifest

FOLDERS = ["checkpoints", "loras", "vae", "unet", "clip", "diffusion_models", "text_encoders",
           "ckpt", "lora", "esrgan", "gligen", "ipadapter", "sams", "t2i_adapter",
           "..", ".", "a/b", "", "x\ny", "con\u202eтрол", " sp "]  # fmt: skip
NAMES = ["a.safetensors", "b.ckpt", "a.safetensors", "sub/c.pt", "..", "../x.pth",
         "n\x00ul.safetensors", "d e.safetensors", "ACE\\e.safetensors", "f"]  # fmt: skip
HOSTS = ["https://huggingface.co/o/r/resolve/main/", "https://example.com/", "http://h:81/",
         "https://civitai.com/api/download/models/", "ftp://x/", "https://e.com/$VAR/"]  # fmt: skip

folder = st.sampled_from(FOLDERS)
name = st.sampled_from(NAMES)
url = st.builds(lambda h, n, q: h + n + q, st.sampled_from(HOSTS), name,
                st.sampled_from(["", "?download", "?token=s3cret", "?a=1&b"]))  # fmt: skip


def _q(text: str) -> str:
    """Single-quote for bash (so the test input means exactly these bytes)."""
    return "'" + text.replace("'", "'\\''") + "'"


def line(kind: str, f: str, n: str, u: str) -> str:
    dest = f"$MODELS_DIR/{f}/{n}"
    return {
        "array": f'X_MODELS=({_q(u)})\nprovisioning_get_files "$COMFYUI_DIR/models/{f}" "${{X_MODELS[@]}}"',
        "pipe": f'HF_MODELS=({_q(u + "|")}"{dest}")',
        "colon": f"M=({_q(f'{u}:{f}:{n}')})",
        "assoc": f'declare -A A=([{_q(u)}]={_q(n)})\nprovisioning_get_files "$MODELS_DIR/{f}" "${{A[@]}}"',
        "wget": f'wget -O "{dest}" {_q(u)}',
        "wgetP": f'wget -P "$MODELS_DIR/{f}" {_q(u)}',
        "curl": f'curl -L -o "{dest}" {_q(u)}',
        "aria": f'aria2c -d "$MODELS_DIR/{f}" -o {_q(n)} {_q(u)}',
        "hf": f'hf download o/r {_q(n)} --local-dir "$MODELS_DIR/{f}"',
        "mv": f'mv "{dest}" "$MODELS_DIR/{f}/renamed.safetensors"',
        "token": f'if [[ -n $HF_TOKEN ]]; then\nwget -O "{dest}" {_q(u)}\nelse\nwget -O "{dest}" {_q(u + "x")}\nfi',
        "clone": f'git clone {_q(u)} "$COMFYUI_DIR/custom_nodes/{n}"',
        "legacy": f"CHECKPOINT_MODELS=({_q(u)})",
    }[kind]


KINDS = ["array", "pipe", "colon", "assoc", "wget", "wgetP", "curl", "aria", "hf", "mv",
         "token", "clone", "legacy"]  # fmt: skip
script = st.lists(st.tuples(st.sampled_from(KINDS), folder, name, url), min_size=1, max_size=8)


def check_emitted(text: str, where: Path) -> None:
    out = where / "manifest.toml"
    out.write_text(text)
    manifest = load_manifest(out)  # raises ManifestError if we emitted something we refuse
    seen = set()
    for m in manifest.models:
        fname = m.filename or unquote(PurePosixPath(urlsplit(m.url).path).name)
        dest = (canonical_folder(m.folder), m.subfolder, fname)
        assert dest not in seen, dest
        seen.add(dest)
    assert "s3cret" not in text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script)
def test_every_emitted_manifest_loads_and_has_one_entry_per_destination(parts):
    text = "\n".join(line(*p) for p in parts) + "\n"
    result = import_bash_script(text)
    with tempfile.TemporaryDirectory() as tmp:
        check_emitted(render(result), Path(tmp))


models = st.lists(
    st.fixed_dictionaries(
        {"name": name, "url": url, "directory": folder},
        optional={"hash": st.sampled_from(["a" * 64, "zz", ""])},
    ),
    max_size=4,
)
nodes = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.integers(0, 50),
            "type": st.sampled_from(
                ["UNETLoader", "VAELoader", "X", "UnetLoaderGGUF", "Bad\nType"]
            ),
            "mode": st.sampled_from([0, 2, 4]),
            "widgets_values": st.lists(name, max_size=2),
            "properties": st.fixed_dictionaries(
                {"models": models},
                optional={
                    "cnr_id": st.sampled_from(
                        ["comfy-core", "comfyui-impact-pack", "../x", "ok-id"]
                    ),
                    "aux_id": st.sampled_from(["owner/repo", "../../etc", "x"]),
                    "ver": st.sampled_from(["1.0.0", "a" * 40, "\x1b[2J"]),
                },
            ),
        }
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes)
def test_every_workflow_import_loads_and_has_one_entry_per_destination(workflow_nodes):
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "wf.json"
        wf.write_text(json.dumps({"nodes": workflow_nodes}))
        result = import_workflow(wf, manifest_path=Path(tmp) / "manifest.toml")
        check_emitted(render(result), Path(tmp))
