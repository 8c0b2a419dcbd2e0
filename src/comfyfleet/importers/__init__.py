"""Importers: turn what users already have (legacy bash provisioning scripts) into a manifest."""

from comfyfleet.importers.bash import import_bash_script, manifest_toml_from_bash

__all__ = ["import_bash_script", "manifest_toml_from_bash"]
