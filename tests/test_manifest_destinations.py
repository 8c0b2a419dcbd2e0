"""Destinations the manifest alone decides: two entries never share one, subfolders stay plain."""

from __future__ import annotations

import pytest

from comfyfleet.errors import ManifestError
from comfyfleet.manifest import parse_manifest

HF = "https://huggingface.co/org/repo/resolve/main"


def error_of(models: list[dict]) -> str:
    with pytest.raises(ManifestError) as exc:
        parse_manifest({"models": models})
    assert exc.value.exit_code == 2
    return str(exc.value)


def test_two_urls_with_the_same_last_segment_in_one_folder_are_a_manifest_error():
    message = error_of(
        [
            {"url": f"{HF}/a/model.safetensors", "folder": "loras"},
            {"url": "https://example.com/files/model.safetensors", "folder": "loras"},
        ]
    )
    assert "models[1]" in message and "models[0]" in message
    assert "loras/model.safetensors" in message
    assert 'filename = "' in message  # the fix


def test_an_explicit_filename_equal_to_another_entrys_url_name_is_a_manifest_error():
    message = error_of(
        [
            {"url": f"{HF}/x.safetensors", "folder": "vae"},
            {"url": f"{HF}/y.safetensors", "folder": "vae", "filename": "x.safetensors"},
        ]
    )
    assert "models[1].filename" in message and "models[0]" in message


def test_the_same_url_twice_into_one_folder_is_a_manifest_error_even_when_unnamed():
    civitai = "https://civitai.com/api/download/models/123"
    message = error_of([{"url": civitai, "folder": "loras"}, {"url": civitai, "folder": "loras"}])
    assert "models[1]" in message and "models[0]" in message


def test_same_name_in_other_folders_or_subfolders_is_fine():
    m = parse_manifest(
        {
            "models": [
                {"url": f"{HF}/a/m.safetensors", "folder": "loras"},
                {"url": f"{HF}/b/m.safetensors", "folder": "loras", "subfolder": "SDXL"},
                {"url": f"{HF}/a/m.safetensors", "folder": "checkpoints"},
                # Civitai names come from the server: only the download can tell.
                {"url": "https://civitai.com/api/download/models/1", "folder": "loras"},
                {"url": "https://civitai.com/api/download/models/2", "folder": "loras"},
            ]
        }
    )
    assert [e.subfolder for e in m.models] == ["", "SDXL", "", "", ""]


@pytest.mark.parametrize(
    "subfolder", ["../x", "/abs", "a//b", "a/../b", "a\\b", "x\ny", "a/", "\u202eb"]
)
def test_a_subfolder_that_is_not_plain_segments_is_refused(subfolder):
    message = error_of([{"url": f"{HF}/m.safetensors", "folder": "loras", "subfolder": subfolder}])
    assert "models[0].subfolder" in message and "unknown key" not in message
