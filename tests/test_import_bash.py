"""`comfyfleet import`: a legacy bash provisioning script becomes a manifest that loads."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.importers.bash import import_bash_script, read_arrays
from comfyfleet.manifest import load_manifest

_register()

LEGACY = r"""#!/bin/bash
# ai-dock style provisioning script
source /venv/main/bin/activate
COMFYUI_DIR=${WORKSPACE}/ComfyUI

APT_PACKAGES=(
    #"package-1"
)

PIP_PACKAGES=(
    "onnxruntime-gpu"
)

NODES=(
    "https://github.com/ltdrdata/ComfyUI-Manager"
    "https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved.git"
    #"https://github.com/cubiq/ComfyUI_IPAdapter_plus"
)

WORKFLOWS=(
    "https://gist.github.com/x/workflow.json"
)

CHECKPOINT_MODELS=(
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"
    # "https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0/resolve/main/sd_xl_refiner_1.0.safetensors"
    "https://civitai.com/api/download/models/128713?type=Model&token=SECRET123"
)

UNET_MODELS=(
    "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors"
)
CLIP_MODELS=("https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn.safetensors")
LORA_MODELS=(
    "https://huggingface.co/x/y/blob/main/lora.safetensors"   # trailing comment
)
VAE_MODELS=(
    'https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan2.1_vae.safetensors'
)
MOTION_MODELS=(
    "https://huggingface.co/guoyww/animatediff/resolve/main/mm_sdxl_v1_beta.ckpt"
)
CONTROLNET_MODELS=(
    "https://huggingface.co/xinsir/controlnet-union-sdxl-1.0/resolve/main/diffusion_pytorch_model.safetensors"
    "https://civitai.com/models/4384?modelVersionId=128713"
)
ESRGAN_MODELS=(
    "https://huggingface.co/ai-forever/Real-ESRGAN/resolve/main/RealESRGAN_x4.pth"
    "${HF_MIRROR}/model.pth"
)
SAM_MODELS=(
    "https://example.com/sam_vit_b.pth"
)

function provisioning_start() {
    provisioning_get_nodes
    provisioning_get_files "${COMFYUI_DIR}/models/checkpoints" "${CHECKPOINT_MODELS[@]}"
}
"""


def write(tmp_path: Path, text: str = LEGACY) -> Path:
    path = tmp_path / "provisioning.sh"
    path.write_text(text)
    return path


def import_to_manifest(tmp_path: Path, text: str = LEGACY):
    result = CliRunner().invoke(app, ["import", str(write(tmp_path, text))])
    assert result.exit_code == 0, result.output
    out = tmp_path / "manifest.toml"
    out.write_text(result.stdout)
    return result.stdout, load_manifest(out)


def test_arrays_map_to_folders_and_the_output_loads(tmp_path):
    _text, manifest = import_to_manifest(tmp_path)
    by_folder = {}
    for m in manifest.models:
        by_folder.setdefault(m.folder, []).append(m.url)
    assert len(by_folder["checkpoints"]) == 2
    assert by_folder["diffusion_models"][0].endswith("wan2.1_t2v_1.3B_fp16.safetensors")
    assert by_folder["text_encoders"][0].endswith("umt5_xxl_fp8_e4m3fn.safetensors")
    assert by_folder["vae"][0].endswith("wan2.1_vae.safetensors")
    assert by_folder["animatediff_models"][0].endswith("mm_sdxl_v1_beta.ckpt")
    assert "animatediff_models" in manifest.comfyui.extra_folders
    assert len(by_folder["controlnet"]) == 1 and len(by_folder["upscale_models"]) == 1
    assert by_folder["loras"] == ["https://huggingface.co/x/y/resolve/main/lora.safetensors"]


def test_commented_out_entries_are_skipped(tmp_path):
    _text, manifest = import_to_manifest(tmp_path)
    urls = [m.url for m in manifest.models] + [n.repo for n in manifest.nodes]
    assert not any("refiner" in u or "IPAdapter" in u for u in urls)


def test_nodes_are_unpinned_with_a_comment(tmp_path):
    text, manifest = import_to_manifest(tmp_path)
    assert [n.repo for n in manifest.nodes] == [
        "https://github.com/ltdrdata/ComfyUI-Manager",
        "https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved.git",
    ]
    assert all(n.ref is None for n in manifest.nodes)
    assert text.count("# unpinned") == 2


def test_unmapped_things_become_comments(tmp_path):
    text, _ = import_to_manifest(tmp_path)
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for thing in ("PIP_PACKAGES", "onnxruntime-gpu", "WORKFLOWS", "SAM_MODELS", "sam_vit_b.pth",
                  "${HF_MIRROR}/model.pth", "civitai.com/models/4384"):  # fmt: skip
        assert thing in comments, thing


def test_tokens_in_urls_are_removed(tmp_path):
    text, manifest = import_to_manifest(tmp_path)
    assert "SECRET123" not in text
    civ = [m.url for m in manifest.models if "civitai" in m.url]
    assert civ == ["https://civitai.com/api/download/models/128713?type=Model"]


def test_read_arrays_handles_quotes_comments_and_one_liners():
    arrays = read_arrays(
        'A=("x y" \'z\' w) # done\nB=(\n  # "gone"\n  "kept" # note (with parens)\n)\n'
        'declare -a C=(\n"c1"\n)\nD+=("d")\n'
    )
    assert arrays == {"A": ["x y", "z", "w"], "B": ["kept"], "C": ["c1"], "D": ["d"]}


def test_an_empty_script_gives_an_empty_valid_manifest(tmp_path):
    _, manifest = import_to_manifest(tmp_path, "#!/bin/bash\necho hi\n")
    assert manifest.models == [] and manifest.nodes == []


def test_import_bash_script_keeps_order():
    imp = import_bash_script('VAE_MODELS=("https://h/a.safetensors" "https://h/b.safetensors")')
    assert [u for u, _, _ in imp.models] == ["https://h/a.safetensors", "https://h/b.safetensors"]


def test_missing_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["import", str(tmp_path / "nope.sh")])
    assert result.exit_code == 2 and "no such file" in result.stderr
