"""Model folders, as ComfyUI's folder_paths.py defines them (Comfy-Org/ComfyUI @4effd05).

Custom nodes import this module (``import folder_paths``) to register their own folder keys
with :func:`add_model_folder_path`, exactly as they do in ComfyUI.
"""

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = os.path.dirname(os.path.realpath(__file__))
models_dir = os.path.join(base_path, "models")

# key -> (directories, extensions); an empty extension set lists every file
folder_names_and_paths = {}


def _core(key, dirs, exts=None):
    folder_names_and_paths[key] = (
        [os.path.join(models_dir, d) for d in dirs],
        set(supported_pt_extensions if exts is None else exts),
    )


_core("checkpoints", ["checkpoints"])
_core("configs", ["configs"], [".yaml"])
_core("loras", ["loras"])
_core("vae", ["vae"])
_core("text_encoders", ["text_encoders", "clip"])
_core("diffusion_models", ["unet", "diffusion_models"])
_core("clip_vision", ["clip_vision"])
_core("style_models", ["style_models"])
_core("embeddings", ["embeddings"])
_core("diffusers", ["diffusers"], ["folder"])
_core("vae_approx", ["vae_approx"])
_core("controlnet", ["controlnet", "t2i_adapter"])
_core("gligen", ["gligen"])
_core("upscale_models", ["upscale_models"])
_core("latent_upscale_models", ["latent_upscale_models"])
_core("hypernetworks", ["hypernetworks"])
_core("photomaker", ["photomaker"])
_core("classifiers", ["classifiers"], [""])
_core("model_patches", ["model_patches"])
_core("audio_encoders", ["audio_encoders"])
for _key in (
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
):
    _core(_key, [_key])
folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())


def map_legacy(folder_name):
    """Legacy folder keys: ``unet`` and ``clip`` are listed under their new names."""
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    """Register a directory for a key; an unknown key becomes a new folder (as in ComfyUI)."""
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path not in paths:
            if is_default:
                paths.insert(0, full_folder_path)
            else:
                paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set(supported_pt_extensions))


def get_folder_paths(folder_name):
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def recursive_search(directory, excluded_dir_names=None):
    """Relative paths of every file under ``directory`` (following symlinks, skipping .git)."""
    if not os.path.isdir(directory):
        return []
    excluded = set(excluded_dir_names or []) | {".git"}
    result = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d not in excluded]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), directory)
            result.append(rel.replace(os.sep, "/"))
    return result


def filter_files_extensions(files, extensions):
    return sorted(
        f for f in files if len(extensions) == 0 or os.path.splitext(f)[-1].lower() in extensions
    )


def get_filename_list(folder_name):
    """Every file ComfyUI accepts for a key: recursive, extension-filtered, de-duplicated."""
    folder_name = map_legacy(folder_name)
    paths, extensions = folder_names_and_paths[folder_name]
    out = []
    for directory in paths:
        for name in filter_files_extensions(recursive_search(directory), extensions):
            if name not in out:
                out.append(name)
    return sorted(out)
