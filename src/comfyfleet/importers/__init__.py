"""Importers: turn what users already have into a manifest, statically and offline.

A provisioning script (bash, in every style seen in the wild) or a ComfyUI workflow (UI or API
format) becomes an :class:`ImportResult`, and :func:`render` writes it as a commented TOML
manifest that :func:`comfyfleet.manifest.load_manifest` accepts.
"""

from comfyfleet.importers.bash import import_bash_script
from comfyfleet.importers.result import ImportResult, render

#: what the script importer reads, for the message when nothing came out
SCRIPT_STYLES = (
    "ai-dock arrays (CHECKPOINT_MODELS=(URL …), NODES=(git URL …))",
    'Vast arrays of "URL|DEST_PATH"',
    'associative arrays (declare -A X=(["URL"]="name"))',
    '"URL:SUBDIR:FILENAME" elements',
    'provisioning_get_files "$COMFYUI_DIR/models/<folder>" "${ARRAY[@]}"',
    "wget -O/-P, curl -o/-O, aria2c -d/-o, hf download … --local-dir, comfy model download",
    "download URL DIR helpers, git clone … custom_nodes/…, mv renames",
)

__all__ = ["SCRIPT_STYLES", "ImportResult", "import_bash_script", "render"]
