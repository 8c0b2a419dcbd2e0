"""`comfyfleet import SCRIPT`: every provisioning-script style becomes the exact manifest.

Each test writes a small script in one style (our own inputs, in the shape of what is
published) and compares the emitted [[models]]/[[nodes]] with what the script really does.
Every emitted manifest is also loaded with load_manifest (the round trip).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.manifest import load_manifest

_register()

HF = "https://huggingface.co"


def run_import(tmp_path: Path, text: str, name: str = "provisioning.sh"):
    script = tmp_path / name
    script.write_text(text)
    result = CliRunner().invoke(app, ["import", str(script)])
    return result


def imported(tmp_path: Path, text: str):
    """(models, nodes, stdout, stderr) of a script that must import with exit 0."""
    result = run_import(tmp_path, text)
    assert result.exit_code == 0, result.output
    out = tmp_path / "manifest.toml"
    out.write_text(result.stdout)
    load_manifest(out)  # the round trip: what we emit, we accept
    doc = tomllib.loads(result.stdout)
    return doc.get("models", []), doc.get("nodes", []), result.stdout, result.stderr


# --- 0. the classic ai-dock array style ------------------------------------------------------

AI_DOCK = r"""#!/bin/bash
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
DEFAULT_WORKFLOW="https://raw.githubusercontent.com/x/default_workflow.json"
CHECKPOINT_MODELS=(
    "https://huggingface.co/stabilityai/sdxl/resolve/main/sd_xl_base_1.0.safetensors"
    # "https://huggingface.co/stabilityai/sdxl/resolve/main/sd_xl_refiner_1.0.safetensors"
    "https://civitai.com/api/download/models/128713?type=Model&token=SECRET123"
)
UNET_MODELS=(
    "https://huggingface.co/Comfy-Org/Wan/resolve/main/split_files/diffusion_models/wan_t2v.safetensors"
)
CLIP_MODELS=("https://huggingface.co/Comfy-Org/Wan/resolve/main/split_files/text_encoders/umt5.safetensors")
LORA_MODELS=(
    "https://huggingface.co/x/y/blob/main/lora.safetensors"   # trailing comment
)
MOTION_MODELS=(
    "https://huggingface.co/guoyww/animatediff/resolve/main/mm_sdxl_v1_beta.ckpt"
)
CONTROLNET_MODELS=(
    "https://civitai.com/models/4384?modelVersionId=128713"
)
ESRGAN_MODELS=(
    "${HF_MIRROR}/model.pth"
)
SAM_MODELS=(
    "https://example.com/sam_vit_b.pth"
)

function provisioning_start() {
    provisioning_get_nodes
    provisioning_get_files "${COMFYUI_DIR}/models/ckpt" "${CHECKPOINT_MODELS[@]}"
}

function provisioning_get_files() {
    dir="$1"
    mkdir -p "$dir"
    shift
    arr=("$@")
    for url in "${arr[@]}"; do
        wget -qnc --content-disposition --show-progress -e dotbytes="${3:-4M}" -P "$dir" "$url"
    done
}
"""


def test_ai_dock_arrays_map_by_their_download_call_then_their_name(tmp_path):
    models, nodes, text, stderr = imported(tmp_path, AI_DOCK)
    assert models == [
        # the call's target (models/ckpt, ai-dock's storage name) decides: checkpoints
        {"url": f"{HF}/stabilityai/sdxl/resolve/main/sd_xl_base_1.0.safetensors",
         "folder": "checkpoints"},
        {"url": "https://civitai.com/api/download/models/128713?type=Model",
         "folder": "checkpoints"},
        {"url": f"{HF}/Comfy-Org/Wan/resolve/main/split_files/diffusion_models/wan_t2v.safetensors",
         "folder": "diffusion_models"},
        {"url": f"{HF}/Comfy-Org/Wan/resolve/main/split_files/text_encoders/umt5.safetensors",
         "folder": "text_encoders"},
        {"url": f"{HF}/x/y/resolve/main/lora.safetensors", "folder": "loras"},
        {"url": f"{HF}/guoyww/animatediff/resolve/main/mm_sdxl_v1_beta.ckpt",
         "folder": "animatediff_models"},
    ]  # fmt: skip
    assert [n["repo"] for n in nodes] == [
        "https://github.com/ltdrdata/ComfyUI-Manager",
        "https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved.git",
    ]
    assert tomllib.loads(text)["comfyui"]["extra_folders"] == ["animatediff_models"]
    assert "SECRET123" not in text and "SECRET123" not in stderr
    assert "refiner" not in text and "IPAdapter" not in text  # commented out in the script


def test_ai_dock_unmapped_items_are_named_with_their_line_in_comments_and_on_stderr(tmp_path):
    _models, _nodes, text, stderr = imported(tmp_path, AI_DOCK)
    lines = AI_DOCK.splitlines()

    def line_of(fragment: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if fragment in line)

    for fragment in ("onnxruntime-gpu", "/workflow.json", "civitai.com/models/4384", "default_workflow",
                     "${HF_MIRROR}/model.pth", "sam_vit_b.pth"):  # fmt: skip
        needle = f"line {line_of(fragment)}: "
        assert any(needle in s and fragment.strip("$") in s for s in stderr.splitlines()), fragment
        assert any(needle in c for c in text.splitlines() if c.startswith("#")), fragment
    # the helper's own machinery is not data: nothing about it is reported
    assert 'arr=("$@")' not in stderr and "dotbytes" not in stderr


# --- 1. Vast's current style: "URL|DEST_PATH", a line break inside the quotes ----------------

VAST = r"""#!/bin/bash
source /venv/main/bin/activate
COMFYUI_DIR=${WORKSPACE}/ComfyUI
MODELS_DIR=${COMFYUI_DIR}/models

HF_MODELS=(
  "https://huggingface.co/Comfy-Org/Wan_2.2/resolve/main/split_files/vae/wan2.2_vae.safetensors
  |$MODELS_DIR/vae/wan2.2_vae.safetensors"
  "https://huggingface.co/Comfy-Org/Wan_2.2/resolve/main/split_files/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors
  |$MODELS_DIR/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
  "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/high.safetensors|$MODELS_DIR/loras/wan22/lightning_high.safetensors"
)

download_hf() {
    local url="$1" dest="$2"
    local repo file
    repo=$(echo "$url" | cut -d/ -f4-5)
    hf download "$repo" "$file" --local-dir "$tmpdir"
    mv "$tmpdir/$file" "$dest"
}

for entry in "${HF_MODELS[@]}"; do
    url="${entry%%|*}"
    dest="${entry#*|}"
    download_hf "$url" "$dest" &
    pids+=($!)
done
"""


def test_vast_url_pipe_dest_arrays_take_folder_subfolder_and_name_from_the_path(tmp_path):
    models, nodes, _text, stderr = imported(tmp_path, VAST)
    base = f"{HF}/Comfy-Org/Wan_2.2/resolve/main/split_files"
    assert models == [
        {"url": f"{base}/vae/wan2.2_vae.safetensors", "folder": "vae",
         "filename": "wan2.2_vae.safetensors"},
        {"url": f"{base}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
         "folder": "diffusion_models", "filename": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"},
        {"url": f"{HF}/lightx2v/Wan2.2-Lightning/resolve/main/high.safetensors", "folder": "loras",
         "subfolder": "wan22", "filename": "lightning_high.safetensors"},
    ]  # fmt: skip
    assert nodes == []
    assert stderr == ""  # function-local arrays and the helper's body are not reported


# --- 2. associative arrays --------------------------------------------------------------------


def test_associative_arrays_give_the_filename(tmp_path):
    script = r"""
declare -A CHECKPOINTS=(
    ["https://civitai.com/api/download/models/351306"]="dreamshaperXL.safetensors"
    ["https://huggingface.co/a/b/resolve/main/x.safetensors"]="renamed.safetensors"
)
declare -A LORAS
LORAS=( ["https://example.com/l?id=1"]="detail.safetensors" )
for url in "${!CHECKPOINTS[@]}"; do :; done
provisioning_get_files "$COMFYUI_DIR/models/checkpoints" "${CHECKPOINTS[@]}"
provisioning_get_files "$COMFYUI_DIR/models/loras" "${LORAS[@]}"
"""
    models, _nodes, _text, _stderr = imported(tmp_path, script)
    assert models == [
        {"url": "https://civitai.com/api/download/models/351306", "folder": "checkpoints",
         "filename": "dreamshaperXL.safetensors"},
        {"url": "https://huggingface.co/a/b/resolve/main/x.safetensors", "folder": "checkpoints",
         "filename": "renamed.safetensors"},
        {"url": "https://example.com/l?id=1", "folder": "loras", "filename": "detail.safetensors"},
    ]  # fmt: skip


# --- 3. "URL:SUBDIR:FILENAME" ------------------------------------------------------------------


def test_an_array_without_a_download_call_takes_the_folder_its_name_says(tmp_path):
    script = r"""
declare -A CHECKPOINTS=( ["https://example.com/a"]="a.safetensors" )
FLUX_LORAS=("https://example.com/l.safetensors")
WAN_CLIP_VISION=("https://example.com/cv.safetensors")
MISC_STUFF=("https://example.com/m.safetensors")
"""
    models, _nodes, _text, stderr = imported(tmp_path, script)
    assert [(m["url"].rsplit("/", 1)[1], m["folder"]) for m in models] == [
        ("a", "checkpoints"),
        ("l.safetensors", "loras"),
        ("cv.safetensors", "clip_vision"),
    ]
    assert (
        "line 5: MISC_STUFF: https://example.com/m.safetensors — no ComfyUI model folder" in stderr
    )


def test_url_subdir_filename_splits_from_the_right_and_keeps_the_query_exact(tmp_path):
    script = r"""
MODELS=(
  "https://huggingface.co/ACE/x/resolve/main/ace.safetensors?download=true:loras/ACE:my_ace.safetensors"
  "https://civitai.com/api/download/models/99?download:checkpoints:sd.safetensors"
  "https://example.com:8443/files/vae.pt:vae:v.pt"
)
"""
    models, _nodes, _text, _stderr = imported(tmp_path, script)
    assert models == [
        {"url": "https://huggingface.co/ACE/x/resolve/main/ace.safetensors?download=true",
         "folder": "loras", "subfolder": "ACE", "filename": "my_ace.safetensors"},
        {"url": "https://civitai.com/api/download/models/99?download", "folder": "checkpoints",
         "filename": "sd.safetensors"},
        {"url": "https://example.com:8443/files/vae.pt", "folder": "vae", "filename": "v.pt"},
    ]  # fmt: skip


# --- 4. the folder comes from the download call ------------------------------------------------


def test_the_call_target_decides_the_folder_and_legacy_storage_names_map(tmp_path):
    script = r"""
WORKSPACE=/data
LTX_UPSCALER=("https://huggingface.co/Lightricks/LTX/resolve/main/ltx-spatial-upscaler.safetensors")
GLIGEN=("https://example.com/gligen_sd14.safetensors")
CHECKPOINT_MODELS=("https://example.com/a.safetensors")
LORA_MODELS=("https://example.com/b.safetensors")
ESRGAN_MODELS=("https://example.com/4x.pth")
provisioning_get_files "${COMFYUI_DIR}/models/latent_upscale_models" "${LTX_UPSCALER[@]}"
provisioning_get_files "${COMFYUI_DIR}/models/gligen" "${GLIGEN[@]}"
provisioning_get_files "${WORKSPACE}/storage/stable_diffusion/models/ckpt" "${CHECKPOINT_MODELS[@]}"
provisioning_get_files "${WORKSPACE}/storage/stable_diffusion/models/lora" "${LORA_MODELS[@]}"
provisioning_get_files "${WORKSPACE}/storage/stable_diffusion/models/esrgan" "${ESRGAN_MODELS[@]}"
"""
    models, _nodes, _text, stderr = imported(tmp_path, script)
    assert [(m["url"].rsplit("/", 1)[1], m["folder"]) for m in models] == [
        ("ltx-spatial-upscaler.safetensors", "latent_upscale_models"),
        ("gligen_sd14.safetensors", "gligen"),
        ("a.safetensors", "checkpoints"),
        ("b.safetensors", "loras"),
        ("4x.pth", "upscale_models"),
    ]
    assert stderr == ""


# --- 5. direct commands --------------------------------------------------------------------------

DIRECT = r"""#!/bin/bash
COMFYUI_DIR=/workspace/ComfyUI
MODELS_DIR="$COMFYUI_DIR/models"
wget -q -O "$MODELS_DIR/checkpoints/sdxl.safetensors" "https://example.com/sdxl.safetensors"
wget -nc -P "$MODELS_DIR/vae" https://example.com/ae.safetensors
curl -L -o "$MODELS_DIR/loras/detail.safetensors" "https://civitai.com/api/download/models/5?type=Model"
curl -fsSL --output-dir "$MODELS_DIR/upscale_models" -O https://example.com/4x_ultra.pth
aria2c -x 16 -s 16 -d "$MODELS_DIR/controlnet" -o union.safetensors https://example.com/cn
hf download Comfy-Org/flux split_files/text_encoders/t5xxl.safetensors --local-dir "$MODELS_DIR/text_encoders"
huggingface-cli download Comfy-Org/flux clip_l.safetensors --local-dir "$MODELS_DIR/text_encoders" --revision v2
sudo -E timeout 600 comfy model download --url https://example.com/emb.pt --relative-path models/embeddings --filename neg.pt
download https://example.com/sam.pth "$MODELS_DIR/sams"
model_url="https://example.com/hy3d.safetensors"
download "$model_url" "$MODELS_DIR/diffusion_models"
cd "$COMFYUI_DIR/custom_nodes" && git clone https://github.com/city96/ComfyUI-GGUF
git clone --depth 1 -b v1.2.3 https://github.com/kijai/ComfyUI-KJNodes.git "$COMFYUI_DIR/custom_nodes/KJ"
git clone https://github.com/comfyanonymous/ComfyUI.git /workspace/ComfyUI
git -C "$COMFYUI_DIR/custom_nodes/KJ" checkout 0123abcd
"""


def test_direct_download_commands_and_clones(tmp_path):
    models, nodes, text, stderr = imported(tmp_path, DIRECT)
    assert models == [
        {"url": "https://example.com/sdxl.safetensors", "folder": "checkpoints",
         "filename": "sdxl.safetensors"},
        {"url": "https://example.com/ae.safetensors", "folder": "vae"},
        {"url": "https://civitai.com/api/download/models/5?type=Model", "folder": "loras",
         "filename": "detail.safetensors"},
        {"url": "https://example.com/4x_ultra.pth", "folder": "upscale_models"},
        {"url": "https://example.com/cn", "folder": "controlnet", "filename": "union.safetensors"},
        # hf keeps the file's repo path under --local-dir
        {"url": f"{HF}/Comfy-Org/flux/resolve/main/split_files/text_encoders/t5xxl.safetensors",
         "folder": "text_encoders", "subfolder": "split_files/text_encoders",
         "filename": "t5xxl.safetensors"},
        {"url": f"{HF}/Comfy-Org/flux/resolve/v2/clip_l.safetensors", "folder": "text_encoders",
         "filename": "clip_l.safetensors"},
        {"url": "https://example.com/emb.pt", "folder": "embeddings", "filename": "neg.pt"},
        {"url": "https://example.com/sam.pth", "folder": "sams"},
        {"url": "https://example.com/hy3d.safetensors", "folder": "diffusion_models"},
    ]  # fmt: skip
    assert [(n["repo"], n.get("ref"), n.get("name")) for n in nodes] == [
        ("https://github.com/city96/ComfyUI-GGUF", None, None),
        ("https://github.com/kijai/ComfyUI-KJNodes.git", "0123abcd", "KJ"),  # its folder, pinned
    ]
    assert tomllib.loads(text)["comfyui"]["extra_folders"] == ["sams"]
    assert "custom_nodes/KJ" in text  # the folder the script chose is noted
    assert "line 17: git clone https://github.com/comfyanonymous/ComfyUI.git" in stderr


# --- 6. renames after download -------------------------------------------------------------------


def test_a_node_s_own_model_directory_maps_to_the_key_that_lists_it(tmp_path):
    script = r"""
animated_models_dir=/opt/ComfyUI/custom_nodes/ComfyUI-AnimateDiff-Evolved/models
model_file=${animated_models_dir}/mm_sd_v15.ckpt
model_url=https://huggingface.co/guoyww/animatediff/resolve/main/mm_sd_v15.ckpt
if [[ ! -e ${model_file} ]]; then
    download ${model_url} ${model_file}
fi
"""
    models, _nodes, text, stderr = imported(tmp_path, script)
    assert models == [
        {"url": "https://huggingface.co/guoyww/animatediff/resolve/main/mm_sd_v15.ckpt",
         "folder": "animatediff_models", "filename": "mm_sd_v15.ckpt"}
    ]  # fmt: skip
    assert tomllib.loads(text)["comfyui"]["extra_folders"] == ["animatediff_models"]
    assert stderr == ""


def test_mv_after_a_download_becomes_the_filename(tmp_path):
    script = r"""
MODELS_DIR=/workspace/ComfyUI/models
wget -P "$MODELS_DIR/diffusion_models" https://huggingface.co/tencent/Hunyuan3D-2/resolve/main/hunyuan3d-dit-v2-0/model.fp16.safetensors
mv "$MODELS_DIR/diffusion_models/model.fp16.safetensors" "$MODELS_DIR/diffusion_models/hunyuan3d-dit-v2.safetensors"
hf download Comfy-Org/x split_files/vae/v.safetensors --local-dir "$MODELS_DIR/vae"
mv "$MODELS_DIR/vae/split_files/vae/v.safetensors" "$MODELS_DIR/vae/"
mv "$MODELS_DIR/loras/never_downloaded.safetensors" "$MODELS_DIR/loras/x.safetensors"
"""
    models, _nodes, _text, stderr = imported(tmp_path, script)
    assert models == [
        {"url": f"{HF}/tencent/Hunyuan3D-2/resolve/main/hunyuan3d-dit-v2-0/model.fp16.safetensors",
         "folder": "diffusion_models", "filename": "hunyuan3d-dit-v2.safetensors"},
        {"url": f"{HF}/Comfy-Org/x/resolve/main/split_files/vae/v.safetensors", "folder": "vae",
         "filename": "v.safetensors"},
    ]  # fmt: skip
    assert "line 7: mv" in stderr and "did not see downloaded" in stderr


# --- 7. token branches ---------------------------------------------------------------------------


def test_token_branches_emit_the_token_branch_and_comment_the_other(tmp_path):
    script = r"""
MODELS_DIR=/workspace/ComfyUI/models
if [[ -n $HF_TOKEN ]]; then
    wget -O "$MODELS_DIR/unet/flux.safetensors" https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors
else
    wget -O "$MODELS_DIR/unet/flux.safetensors" https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/flux1-schnell.safetensors
fi
if [ -z "$CIVITAI_TOKEN" ]; then
    LORA_MODELS+=("https://example.com/free.safetensors")
else
    LORA_MODELS+=("https://civitai.com/api/download/models/7")
fi
"""
    models, _nodes, text, _stderr = imported(tmp_path, script)
    assert models == [
        {"url": f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
         "folder": "unet", "filename": "flux.safetensors"},
        {"url": "https://civitai.com/api/download/models/7", "folder": "loras"},
    ]  # fmt: skip
    commented = [line for line in text.splitlines() if line.startswith("# url = ")]
    assert commented == [
        f'# url = "{HF}/black-forest-labs/FLUX.1-schnell/resolve/main/flux1-schnell.safetensors"',
        '# url = "https://example.com/free.safetensors"',
    ]
    assert "applies when HF_TOKEN is not set" in text
    assert "applies when CIVITAI_TOKEN is not set" in text


# --- 8. variables -------------------------------------------------------------------------------


def test_variables_with_defaults_are_expanded(tmp_path):
    script = r"""
WORKSPACE=${WORKSPACE:-/srv}
COMFYUI_DIR="${WORKSPACE}/comfy"
BASE=${COMFYUI_DIR}/models
VAE_DIR="$BASE/vae"
wget -P "$VAE_DIR" https://example.com/v1.safetensors
wget -P "${MODELS_DIR}/clip_vision" https://example.com/cv.safetensors
wget -P "${UNKNOWN_ROOT}/models/loras" https://example.com/l.safetensors
wget -P "$UNKNOWN_DIR" https://example.com/lost.safetensors
wget -O "$VAE_DIR/$(basename https://example.com/v2.safetensors)" https://example.com/v2.safetensors
"""
    models, _nodes, _text, stderr = imported(tmp_path, script)
    assert [(m["url"].rsplit("/", 1)[1], m["folder"]) for m in models] == [
        ("v1.safetensors", "vae"),
        ("cv.safetensors", "clip_vision"),  # MODELS_DIR defaults to $COMFYUI_DIR/models
        ("l.safetensors", "loras"),  # an unknown root does not change the folder
        ("v2.safetensors", "vae"),  # a computed name: the folder still counts
    ]
    assert "filename" not in models[3]
    assert stderr.count("\n") == 1 and "line 9:" in stderr and "$UNKNOWN_DIR" in stderr


# --- 9. subfolders and hostile paths --------------------------------------------------------------


def test_a_path_leaving_the_model_folders_is_refused_and_said_so(tmp_path):
    script = r"""
MODELS_DIR=/workspace/ComfyUI/models
wget -O "$MODELS_DIR/../../../root/.ssh/authorized_keys.pt" https://example.com/k.pt
wget -O "$MODELS_DIR/loras/x"$'\n'"y.safetensors" https://example.com/n.safetensors
wget -O "$MODELS_DIR/loras/SDXL/ok.safetensors" https://example.com/ok.safetensors
"""
    models, _nodes, text, stderr = imported(tmp_path, script)
    assert models == [
        {"url": "https://example.com/ok.safetensors", "folder": "loras", "subfolder": "SDXL",
         "filename": "ok.safetensors"}
    ]  # fmt: skip
    assert "line 3:" in stderr and "refused" in stderr
    assert "line 4:" in stderr and "control character" in stderr
    assert "authorized_keys" not in "".join(line for line in text.splitlines() if "=" in line
                                             and not line.startswith("#"))  # fmt: skip


# --- nothing dropped silently ---------------------------------------------------------------------


def test_a_script_with_nothing_to_import_exits_1_naming_the_known_styles(tmp_path):
    result = run_import(tmp_path, "#!/bin/bash\necho hi\napt-get install -y git\n")
    assert result.exit_code == 1
    assert "line 3: apt-get install -y git" in result.stderr
    assert "no model and no custom node found" in result.stderr
    for style in ("URL|DEST_PATH", "URL:SUBDIR:FILENAME", "declare -A", "wget", "hf download"):
        assert style in result.stderr
    assert result.stdout == ""


def test_unknown_downloaders_and_here_documents_are_named(tmp_path):
    script = r"""
wget -P /workspace/ComfyUI/models/vae https://example.com/v.safetensors
axel -n 8 https://example.com/big.safetensors
cat > /tmp/list.txt <<EOF
https://example.com/in_a_file.safetensors
EOF
wget -i /tmp/list.txt
"""
    _models, _nodes, text, stderr = imported(tmp_path, script)
    assert "line 3: axel" in stderr
    assert "line 5:" in stderr and "here-document" in stderr
    assert "line 7: wget -i /tmp/list.txt" in stderr
    assert "# line 3: axel" in text


def test_the_same_destination_twice_is_one_entry_and_a_comment(tmp_path):
    script = r"""
VAE_MODELS=("https://example.com/a/vae.safetensors" "https://example.com/a/vae.safetensors")
wget -P /workspace/ComfyUI/models/vae https://mirror.example.com/b/vae.safetensors
"""
    models, _nodes, text, _stderr = imported(tmp_path, script)
    assert models == [{"url": "https://example.com/a/vae.safetensors", "folder": "vae"}]
    assert "the same file as line 2" in text
    assert "same destination vae/vae.safetensors as line 2, from another URL" in text


def test_windows_line_endings_read_like_unix_ones(tmp_path):
    models, _nodes, _text, stderr = imported(tmp_path, VAST.replace("\n", "\r\n"))
    assert models == imported(tmp_path, VAST)[0] and len(models) == 3
    assert stderr == ""


def test_missing_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["import", str(tmp_path / "nope.sh")])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_output_file_is_written_and_stdout_stays_empty(tmp_path):
    script = tmp_path / "p.sh"
    script.write_text('VAE_MODELS=("https://example.com/v.safetensors")\n')
    out = tmp_path / "out" / "m.toml"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["import", str(script), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert load_manifest(out).models[0].folder == "vae"


def test_two_forks_with_one_basename_get_two_folders(tmp_path):
    script = 'NODES=("https://github.com/a/ComfyUI-X" "https://github.com/b/ComfyUI-X.git" "https://github.com/a/ComfyUI-X")\n'
    _models, nodes, text, _stderr = imported(tmp_path, script)
    assert [(n["repo"], n.get("name")) for n in nodes] == [
        ("https://github.com/a/ComfyUI-X", None),
        ("https://github.com/b/ComfyUI-X.git", "ComfyUI-X-2"),
    ]
    assert "the same node as line 1" in text


def test_a_repo_whose_folder_would_be_dot_dot_is_refused(tmp_path):
    script = r"""
NODES=("https://github.com/x/sub/.." "https://github.com/ok/ComfyUI-Fine")
git clone https://github.com/y/z/.. "$COMFYUI_DIR/custom_nodes/.."
"""
    _models, nodes, _text, stderr = imported(tmp_path, script)
    assert [n["repo"] for n in nodes] == ["https://github.com/ok/ComfyUI-Fine"]
    assert "line 2:" in stderr and "line 3:" in stderr
    assert stderr.count("refused: node folder '..'") == 2


def test_embedded_workflows_input_files_and_helper_installs(tmp_path):
    script = r"""
write_workflow() {
    cat > "$WORKFLOW_DIR/t2v.json" << 'WORKFLOW_JSON'
{"nodes": [{"id": 1, "type": "VAELoader", "widgets_values": ["v.safetensors"]}]}
WORKFLOW_JSON
}
install_node() {
    pip install --no-cache-dir -r "$1/requirements.txt"
}
wget -O "$COMFYUI_DIR/input/example.jpg" https://example.com/example.jpg
wget -P "$COMFYUI_DIR/models/vae" https://example.com/v.safetensors
"""
    _models, _nodes, _text, stderr = imported(tmp_path, script)
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr
    assert "line 4: here-document, lines 4-4 — an embedded ComfyUI workflow" in lines[0]
    assert "line 10:" in lines[1] and "an input file for ComfyUI (input/), not a model" in lines[1]


def test_import_never_touches_the_network_nor_runs_the_script(tmp_path, monkeypatch):
    import socket
    import subprocess

    def refuse(*_a, **_k):
        raise AssertionError("import must not use the network or run anything")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    marker = tmp_path / "ran"
    script = f"touch {marker}\nwget -P /workspace/ComfyUI/models/vae https://huggingface.co/o/r/resolve/main/v.safetensors\n"
    models, _nodes, _text, _stderr = imported(tmp_path, script)
    assert len(models) == 1 and not marker.exists()
