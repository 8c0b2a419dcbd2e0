"""File lists of real Hugging Face repos (as of 2025), to test suggestions against real siblings,
and helpers for the check tests."""

import socket

from comfyfleet.testing.modelserver import ModelServer, make_safetensors

WAN21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
WAN21_FILES = [
    ".gitattributes",
    "README.md",
    "split_files/clip_vision/clip_vision_h.safetensors",
    "split_files/diffusion_models/wan2.1_flf2v_720p_14B_fp16.safetensors",
    "split_files/diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors",
    "split_files/diffusion_models/wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors",
    "split_files/diffusion_models/wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors",
    "split_files/diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors",
    "split_files/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors",
    "split_files/diffusion_models/wan2.1_t2v_14B_fp8_e4m3fn.safetensors",
    "split_files/diffusion_models/wan2.1_vace_14B_fp16.safetensors",
    "split_files/text_encoders/umt5_xxl_fp16.safetensors",
    "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "split_files/vae/wan_2.1_vae.safetensors",
]
WAN22 = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
WAN22_FILES = [
    ".gitattributes",
    "README.md",
    "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
    "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    "split_files/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    "split_files/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
    "split_files/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors",
    "split_files/text_encoders/umt5_xxl_fp16.safetensors",
    "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "split_files/vae/wan2.2_vae.safetensors",
    "split_files/vae/wan_2.1_vae.safetensors",
]
ANIMATEDIFF = "guoyww/animatediff"
ANIMATEDIFF_FILES = [
    ".gitattributes",
    "README.md",
    "mm_sd_v14.ckpt",
    "mm_sd_v15.ckpt",
    "mm_sd_v15_v2.ckpt",
    "mm_sdxl_v10_beta.ckpt",
    "v2_lora_PanLeft.ckpt",
    "v2_lora_PanRight.ckpt",
    "v2_lora_RollingAnticlockwise.ckpt",
    "v2_lora_ZoomIn.ckpt",
    "v2_lora_ZoomOut.ckpt",
    "v3_sd15_adapter.ckpt",
    "v3_sd15_mm.ckpt",
    "v3_sd15_sparsectrl_rgb.ckpt",
    "v3_sd15_sparsectrl_scribble.ckpt",
]

#: (repo, the path a legacy script asked for, the path that exists)
KNOWN_MISTAKES = [
    (
        WAN21,
        "split_files/text_encoders/umt5_xxl_fp8_e4m3fn.safetensors",
        "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    ),
    (WAN21, "split_files/vae/wan2.1_vae.safetensors", "split_files/vae/wan_2.1_vae.safetensors"),
    (WAN22, "split_files/vae/wan2.1_vae.safetensors", "split_files/vae/wan_2.1_vae.safetensors"),
    (ANIMATEDIFF, "mm_sdxl_v1_beta.ckpt", "mm_sdxl_v10_beta.ckpt"),
]
REPOS = {WAN21: WAN21_FILES, WAN22: WAN22_FILES, ANIMATEDIFF: ANIMATEDIFF_FILES}


def add_repo(srv: ModelServer, repo: str, files: list[str], **kw) -> None:
    """Publish every path of ``files`` in ``repo`` (small stand-in bytes)."""
    for i, path in enumerate(files):
        data = make_safetensors(256, seed=i) if path.endswith((".safetensors", ".ckpt")) else b"x"
        srv.add_hf_file(repo, path, data, **kw)


def closed_port_url() -> str:
    """A URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.safetensors"


def assert_downloaded_nothing(srv: ModelServer) -> None:
    """Every GET of file bytes asked for the first byte only (API documents aside)."""
    for r in srv.requests:
        if r.method == "GET" and not r.path.startswith(("/api/models/", "/api/v1/")):
            assert r.range == "bytes=0-0", f"{r.method} {r.path} without Range: bytes=0-0"
        assert r.method in {"GET", "HEAD"}, r
