"""`comfyfleet import WORKFLOW.json`: models (with subfolders, bypassed nodes, files named
without a URL), custom nodes from cnr_id/aux_id/ver and the pack table, hostile directories,
and workflow paths that resolve wherever the manifest is written."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import comfyui_workflow_templates_json
from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.errors import WorkflowError
from comfyfleet.importers import render
from comfyfleet.importers.workflow import import_workflow
from comfyfleet.install.workflows import missing_models, parse_workflow, suggested_entry
from comfyfleet.manifest import load_manifest, parse_manifest

_register()

TEMPLATES = sorted(Path(comfyui_workflow_templates_json.__file__).parent.rglob("*.json"))
COMMIT = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"


def cli(*args: str):
    return CliRunner().invoke(app, ["import", *args])


def write(tmp_path: Path, data: object, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def imported(tmp_path: Path, data: object):
    """(parsed TOML, stdout, stderr) of importing ``data`` with -o (and loading the result)."""
    wf = write(tmp_path, data)
    out = tmp_path / "manifest.toml"
    result = cli(str(wf), "-o", str(out))
    assert result.exit_code == 0, result.output
    load_manifest(out)
    text = out.read_text()
    return tomllib.loads(text), text, result.stderr


def test_every_official_template_imports_to_a_manifest_that_loads(tmp_path: Path):
    parsed = with_models = optional = 0
    out = tmp_path / "m.toml"
    for path in TEMPLATES:
        try:
            result = import_workflow(path, manifest_path=out)
        except WorkflowError:
            data = json.loads(path.read_text())
            assert not (isinstance(data, dict) and "nodes" in data), path  # index files only
            continue
        parsed += 1
        out.write_text(render(result))
        manifest = load_manifest(out)
        assert manifest.workflow_source(manifest.workflows[0]) == path.resolve()
        with_models += bool(manifest.models)
        optional += sum(not m.required for m in manifest.models)
    assert parsed > 600 and with_models > 200
    assert optional > 10  # the templates' bypassed Lightning LoRAs, still provisioned


CUSTOM = {
    "nodes": [
        {
            "id": 12,
            "type": "WanVideoModelLoader",
            "mode": 0,
            "properties": {
                "cnr_id": "ComfyUI-WanVideoWrapper",
                "aux_id": "kijai/ComfyUI-WanVideoWrapper",
                "ver": COMMIT,
            },
            "widgets_values": ["wan2.1_i2v_480p_14B_fp8.safetensors", "fp8_e4m3fn", "offload"],
        },
        {
            "id": 13,
            "type": "WanVideoVAELoader",
            "mode": 0,
            "properties": {
                "cnr_id": "ComfyUI-WanVideoWrapper",
                "aux_id": "kijai/ComfyUI-WanVideoWrapper",
                "ver": COMMIT,
            },
            "widgets_values": ["Wan2_1_VAE_bf16.safetensors", "bf16"],
        },
        {
            "id": 14,
            "type": "WanVideoSampler",
            "mode": 0,
            "properties": {"cnr_id": "ComfyUI-WanVideoWrapper", "ver": COMMIT},
            "widgets_values": [],
        },
        {
            "id": 20,
            "type": "VHS_VideoCombine",
            "mode": 0,
            "properties": {"cnr_id": "comfyui-videohelpersuite", "ver": "1.6.1"},
            "widgets_values": {"frame_rate": 16, "filename_prefix": "wan"},
        },
        {
            "id": 21,
            "type": "MysteryNode",
            "mode": 0,
            "properties": {"cnr_id": "comfyui-mystery-pack", "ver": "2.0.0"},
            "widgets_values": ["weights/mystery.safetensors"],
        },
        {
            "id": 30,
            "type": "LoraLoaderModelOnly",
            "mode": 4,
            "properties": {
                "cnr_id": "comfy-core",
                "ver": "0.3.60",
                "models": [
                    {
                        "name": "lightx2v\\lightning_4step.safetensors",
                        "url": "https://huggingface.co/lightx2v/L/resolve/main/l4.safetensors",
                        "directory": "loras",
                    }
                ],
            },
            "widgets_values": ["lightx2v\\lightning_4step.safetensors", 1.0],
        },
        {
            "id": 31,
            "type": "CLIPLoader",
            "mode": 2,
            "properties": {"cnr_id": "comfy-core"},
            "widgets_values": ["umt5_xxl_fp8.safetensors", "wan", "default"],
        },
        {
            "id": 32,
            "type": "Power Lora Loader (rgthree)",
            "mode": 0,
            "properties": {},
            "widgets_values": [{}, {"lora": "detail.safetensors", "on": True}, ""],
        },
    ]
}


def test_custom_nodes_come_from_aux_id_cnr_id_and_the_pack_table(tmp_path: Path):
    doc, text, _stderr = imported(tmp_path, CUSTOM)
    assert doc["nodes"] == [
        {
            "repo": "https://github.com/kijai/ComfyUI-WanVideoWrapper",
            "ref": COMMIT,  # ver is a commit: pinned
            "classes": ["WanVideoModelLoader", "WanVideoVAELoader", "WanVideoSampler"],
        },
        {
            "repo": "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite",
            "classes": ["VHS_VideoCombine"],
        },
        {"registry_id": "comfyui-mystery-pack", "classes": ["MysteryNode"]},
        {
            "repo": "https://github.com/rgthree/rgthree-comfy",
            "classes": ["Power Lora Loader (rgthree)"],
        },
    ]
    assert "saved with version 1.6.1 of this pack" in text
    assert "saved with version 2.0.0 of this pack" in text
    assert "check and provision resolve this Comfy Registry id" in text


def test_bypassed_nodes_provision_their_models_as_optional(tmp_path: Path):
    doc, text, _stderr = imported(tmp_path, CUSTOM)
    assert doc["models"] == [
        {
            "url": "https://huggingface.co/lightx2v/L/resolve/main/l4.safetensors",
            "folder": "loras",
            "subfolder": "lightx2v",  # ComfyUI lists it as lightx2v/lightning_4step.safetensors
            "filename": "lightning_4step.safetensors",
            "required": False,
        }
    ]
    assert "node 30 (LoraLoaderModelOnly) is bypassed" in text


def test_files_named_without_a_url_become_commented_blocks_with_their_folder(tmp_path: Path):
    _doc, text, _stderr = imported(tmp_path, CUSTOM)
    assert (
        "# needs a URL (WanVideoModelLoader, node 12):\n"
        "# [[models]]\n"
        '# url = ""\n'
        '# folder = "diffusion_models"\n'
        '# filename = "wan2.1_i2v_480p_14B_fp8.safetensors"\n'
    ) in text
    assert (
        '# needs a URL (WanVideoVAELoader, node 13):\n# [[models]]\n# url = ""\n# folder = "vae"'
        in text
    )
    # a muted core loader: still listed, optional
    block = text.split("# needs a URL (CLIPLoader, node 31, muted):\n", 1)[1].split("\n\n")[0]
    assert '# folder = "text_encoders"' in block and "# required = false" in block
    # an unknown class: folder left for the user, subfolder kept
    block = text.split("# needs a URL (MysteryNode, node 21):\n", 1)[1].split("\n\n")[0]
    assert '# folder = ""' in block and '# subfolder = "weights"' in block
    # a value inside a dict widget (rgthree's Power Lora Loader), folder from the class
    block = text.split("# needs a URL (Power Lora Loader (rgthree), node 32):\n", 1)[1]
    assert block.startswith(
        '# [[models]]\n# url = ""\n# folder = "loras"\n# filename = "detail.safetensors"'
    )
    # the file with a URL is not listed again as needing one
    assert "needs a URL (LoraLoaderModelOnly" not in text


API = {
    "1": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "flux1-dev-Q8_0.gguf"}},
    "2": {
        "class_type": "SAMLoader",
        "inputs": {"model_name": "sam_vit_b_01ec64.pth", "device_mode": "AUTO"},
    },
    "3": {
        "class_type": "UltralyticsDetectorProvider",
        "inputs": {"model_name": "bbox/face_yolov8m.pt"},
    },
    "4": {
        "class_type": "LatentUpscaleModelLoader",
        "inputs": {"model_name": "ltx-2-spatial-upscaler-x2.safetensors"},
    },
    "5": {"class_type": "NunchakuFluxDiTLoader", "inputs": {"model_path": "svdq-int4-flux.1-dev"}},
    "6": {"class_type": "SomeLoraThing", "inputs": {"lora_name": "style.safetensors"}},
    "7": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["1", 0]}},
}


def test_a_model_listed_without_a_url_is_a_block_in_its_directory(tmp_path: Path):
    node = {"id": 5, "type": "Custom", "properties": {"models": [
        {"name": "clip_vision_h.safetensors", "directory": "clip_vision"},
        {"name": "x.safetensors", "directory": "../../etc"},
    ]}, "widgets_values": []}  # fmt: skip
    note = {"id": 6, "type": "Note", "widgets_values": ["download my_model.safetensors first"]}
    _doc, text, _stderr = imported(tmp_path, {"nodes": [node, note]})
    block = text.split("# needs a URL (Custom, node 5):\n# [[models]]\n", 1)[1]
    assert block.startswith(
        '# url = ""\n# folder = "clip_vision"\n# filename = "clip_vision_h.safetensors"'
    )
    assert (
        "# needs a URL (Custom, node 5):\n# [[models]]\n# folder unknown" in text
    )  # ../../etc dropped
    assert "my_model" not in text  # a note's text is not a file choice


def test_api_format_custom_loaders_and_packs_by_class(tmp_path: Path):
    doc, text, _stderr = imported(tmp_path, API)
    assert [n["repo"] for n in doc["nodes"]] == [
        "https://github.com/city96/ComfyUI-GGUF",
        "https://github.com/ltdrdata/ComfyUI-Impact-Pack",
        "https://github.com/ltdrdata/ComfyUI-Impact-Subpack",
        "https://github.com/nunchaku-tech/ComfyUI-nunchaku",
    ]
    folders = {
        line.split("(", 1)[1].split(",", 1)[0]: block
        for line, block in (
            (b.split("\n", 1)[0], b) for b in text.split("\n\n") if b.startswith("# needs a URL")
        )
    }
    assert (
        '# folder = "diffusion_models"\n# filename = "flux1-dev-Q8_0.gguf"'
        in folders["UnetLoaderGGUF"]
    )
    assert '# folder = "sams"' in folders["SAMLoader"]
    assert (
        '# folder = "ultralytics"\n# subfolder = "bbox"' in folders["UltralyticsDetectorProvider"]
    )
    assert '# folder = "latent_upscale_models"' in folders["LatentUpscaleModelLoader"]
    assert '# folder = "loras"' in folders["SomeLoraThing"]  # from the widget's name
    assert "NunchakuFluxDiTLoader" not in folders  # a model directory, not a file


def test_a_hostile_directory_is_refused_and_said_so(tmp_path: Path):
    evil = "https://example.com/authorized_keys.safetensors"
    models = [
        {"name": "authorized_keys.safetensors", "url": evil, "directory": "../../../root/.ssh"},
        {"name": "b.safetensors", "url": evil, "directory": "/etc"},
        {"name": "c.safetensors", "url": evil, "directory": "loras/../../x"},
        {"name": "d.safetensors", "url": evil, "directory": "lo\nras"},
        {"name": "../../e.safetensors", "url": evil, "directory": "loras"},
        {"name": "ok.safetensors", "url": "https://example.com/ok.safetensors", "directory": "vae"},
    ]
    data = {"nodes": [{"id": 1, "type": "X", "properties": {"models": models}}]}
    doc, text, stderr = imported(tmp_path, data)
    assert doc["models"] == [
        {"url": "https://example.com/ok.safetensors", "folder": "vae", "filename": "ok.safetensors"}
    ]
    assert doc["comfyui"]["extra_folders"] == []
    refused = [line for line in stderr.splitlines() if "refused" in line]
    assert len(refused) == 5, stderr
    assert all("node 1 (X)" in line for line in refused)
    assert "\n" not in "".join(refused) and "control character (U+000A)" in stderr
    assert sum(line.startswith("# node 1 (X)") for line in text.splitlines()) == 5


def test_workflow_paths_are_relative_with_o_and_absolute_on_stdout(tmp_path: Path):
    (tmp_path / "flows").mkdir()
    wf = write(tmp_path / "flows", CUSTOM)
    out = tmp_path / "deploy" / "manifest.toml"
    out.parent.mkdir()
    result = cli(str(wf), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert tomllib.loads(out.read_text())["workflows"] == [{"path": "../flows/wf.json"}]
    manifest = load_manifest(out)
    assert manifest.workflow_source(manifest.workflows[0]) == wf.resolve()

    result = cli(str(wf))
    assert tomllib.loads(result.stdout)["workflows"] == [{"path": str(wf.resolve())}]


def test_a_file_that_is_not_a_workflow_exits_2(tmp_path: Path):
    result = cli(str(write(tmp_path, {"hello": "world"})))
    assert result.exit_code == 2 and "not a ComfyUI workflow" in result.stderr


def test_registry_id_and_subfolder_entries_load(tmp_path: Path):
    manifest = parse_manifest(
        {
            "models": [
                {"url": "https://e.com/x.safetensors", "folder": "loras", "subfolder": "ACE/v2"}
            ],
            "nodes": [{"registry_id": "comfyui-impact-pack"}],
        }
    )
    assert manifest.nodes[0].name == "comfyui-impact-pack"
    assert manifest.model_path(Path("/r"), manifest.models[0], "x.safetensors") == Path(
        "/r/ComfyUI/models/loras/ACE/v2/x.safetensors"
    )


def test_the_cross_check_knows_every_alias_from_the_one_table(tmp_path: Path):
    manifest = parse_manifest({})
    root = tmp_path / "root"
    (root / "ComfyUI/models/t2i_adapter").mkdir(parents=True)
    (root / "ComfyUI/models/t2i_adapter/sketch.safetensors").write_bytes(b"x")
    workflow = parse_workflow(
        {"nodes": [{"id": 1, "type": "ControlNetLoader", "widgets_values": ["sketch.safetensors"]}]}
    )
    assert missing_models(manifest, workflow, root=root) == []
    assert [n.filename for n in missing_models(manifest, workflow)] == ["sketch.safetensors"]


def test_the_entry_suggested_for_a_missing_subfolder_model_satisfies_the_check():
    workflow = parse_workflow(
        {
            "nodes": [
                {
                    "id": 1,
                    "type": "CheckpointLoaderSimple",
                    "widgets_values": ["SDXL\\base.safetensors"],
                    "properties": {
                        "models": [
                            {"name": "SDXL\\base.safetensors", "directory": "checkpoints",
                             "url": "https://example.com/base.safetensors"}
                        ]
                    },
                }
            ]
        }
    )  # fmt: skip
    [need] = missing_models(parse_manifest({}), workflow)
    entry = suggested_entry(need)
    assert 'subfolder = "SDXL"\nfilename = "base.safetensors"' in entry
    manifest = parse_manifest(tomllib.loads(entry))
    assert missing_models(manifest, workflow) == []
