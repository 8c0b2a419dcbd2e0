"""Core node classes of the stand-in: the loaders (whose inputs list model files) and the savers.

Only what the provisioner's checks look at: ``/object_info/<Class>`` answers with the input
spec, where a loader's file input lists what ``folder_paths`` finds — as ComfyUI's does.
"""

import folder_paths


def _loader(**inputs):
    class Loader:
        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {
                    name: (folder_paths.get_filename_list(key),) for name, key in inputs.items()
                }
            }

        RETURN_TYPES = ("MODEL",)
        FUNCTION = "load"
        CATEGORY = "loaders"

    return Loader


def _saver(*names):
    class Saver:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {name: ("STRING", {"default": "ComfyUI"}) for name in names}}

        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "save"
        CATEGORY = "image"

    return Saver


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": _loader(ckpt_name="checkpoints"),
    "VAELoader": _loader(vae_name="vae"),
    "LoraLoader": _loader(lora_name="loras"),
    "LoraLoaderModelOnly": _loader(lora_name="loras"),
    "UNETLoader": _loader(unet_name="diffusion_models"),
    "CLIPLoader": _loader(clip_name="text_encoders"),
    "DualCLIPLoader": _loader(clip_name1="text_encoders", clip_name2="text_encoders"),
    "CLIPVisionLoader": _loader(clip_name="clip_vision"),
    "ControlNetLoader": _loader(control_net_name="controlnet"),
    "UpscaleModelLoader": _loader(model_name="upscale_models"),
    "SaveImage": _saver("images", "filename_prefix"),
}
