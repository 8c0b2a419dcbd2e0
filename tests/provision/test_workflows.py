"""Workflow parsing (UI, API, subgraphs), the manifest cross-check, `set`, and import."""

from __future__ import annotations

import json
from pathlib import Path

import comfyui_workflow_templates_json
import pytest

from comfyfleet.errors import WorkflowError
from comfyfleet.install.workflows import (
    apply_settings,
    missing_models,
    model_needs,
    parse_workflow,
)
from comfyfleet.manifest import parse_manifest

TEMPLATES = sorted(Path(comfyui_workflow_templates_json.__file__).parent.rglob("*.json"))


def test_models_inside_subgraphs_are_found():
    sub_templates = [
        p
        for p in TEMPLATES
        if '"subgraphs"' in (t := p.read_text())
        and '"models"' in t
        and any(
            n.get("properties", {}).get("models")
            for s in json.loads(t).get("definitions", {}).get("subgraphs", [])
            for n in s.get("nodes", [])
        )
    ]
    assert sub_templates
    workflow = parse_workflow(json.loads(sub_templates[0].read_text()), sub_templates[0])
    assert any(n.node.subgraph for n in model_needs(workflow))


UI = {
    "nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["sdxl\\base.safetensors"]},
        {
            "id": 2,
            "type": "DualCLIPLoader",
            "widgets_values": ["clip_l.safetensors", "t5.safetensors", "flux"],
        },
        {"id": 3, "type": "VAELoader", "mode": 4, "widgets_values": ["bypassed.safetensors"]},
        {"id": 4, "type": "SaveImage", "widgets_values": ["ComfyUI"]},
        {"id": 5, "type": "SaveVideo", "widgets_values": ["video/ComfyUI", "auto", "auto"]},
        {
            "id": 6,
            "type": "VHS_VideoCombine",
            "widgets_values": {"frame_rate": 8, "filename_prefix": "a"},
        },
        {
            "id": 7,
            "type": "VHS_VideoCombine",
            "widgets_values": [8, 0, "b", "video/h264-mp4", False, True],
        },
        {"id": 8, "type": "KSampler", "widgets_values": [1, "fixed", 20, 8, "euler", "normal", 1]},
        {
            "id": 9,
            "type": "UNETLoader",
            "widgets_values": ["wan.safetensors", "default"],
            "properties": {
                "models": [
                    {
                        "name": "wan.safetensors",
                        "directory": "diffusion_models",
                        "url": "https://example.com/wan.safetensors",
                        "hash": "a" * 64,
                    }
                ]
            },
        },
    ]
}


def test_loader_widgets_and_properties_name_the_models_needed():
    needs = {(n.node.id, n.key, n.filename) for n in model_needs(parse_workflow(UI))}
    assert needs == {
        ("1", "checkpoints", "sdxl/base.safetensors"),
        ("2", "text_encoders", "clip_l.safetensors"),
        ("2", "text_encoders", "t5.safetensors"),
        ("9", "diffusion_models", "wan.safetensors"),
    }


def test_missing_model_names_workflow_node_class_file_and_entry_to_add():
    manifest = parse_manifest(
        {
            "models": [
                {"url": "https://example.com/clip_l.safetensors", "folder": "clip"},
                {
                    "url": "https://example.com/x",
                    "folder": "text_encoders",
                    "filename": "t5.safetensors",
                },
                {
                    "url": "https://example.com/y",
                    "folder": "checkpoints",
                    "filename": "base.safetensors",
                },
            ]
        }
    )
    missing = missing_models(manifest, parse_workflow(UI, Path("flux.json")))
    described = [m.describe() for m in missing]
    assert described == [
        "flux.json: node 1 (CheckpointLoaderSimple) needs checkpoints/sdxl/base.safetensors",
        "flux.json: node 9 (UNETLoader) needs diffusion_models/wan.safetensors",
    ]
    from comfyfleet.install.workflows import describe_missing

    assert 'url = "https://example.com/wan.safetensors"' in describe_missing(missing[1])
    assert f'sha256 = "{"a" * 64}"' in describe_missing(missing[1])


def test_set_uses_widget_order_of_core_output_nodes_in_ui_format():
    workflow = parse_workflow(json.loads(json.dumps(UI)))
    apply_settings(
        workflow,
        {
            "SaveImage.filename_prefix": "out/img",
            "SaveVideo.filename_prefix": "out/vid",
            "VHS_VideoCombine.filename_prefix": "out/vhs",
        },
    )
    values = {n["id"]: n["widgets_values"] for n in workflow.data["nodes"]}
    assert values[4] == ["out/img"]
    assert values[5] == ["out/vid", "auto", "auto"]
    assert values[6]["filename_prefix"] == "out/vhs"
    assert values[7][2] == "out/vhs"


def test_set_on_other_classes_in_ui_format_is_a_clear_error():
    with pytest.raises(WorkflowError, match="widget order of KSampler is not known"):
        apply_settings(parse_workflow(json.loads(json.dumps(UI))), {"KSampler.seed": 1})
    with pytest.raises(WorkflowError, match="no node of class SaveImageX"):
        apply_settings(
            parse_workflow(json.loads(json.dumps(UI))), {"SaveImageX.filename_prefix": "a"}
        )


def test_set_in_api_format_changes_the_input_by_name():
    api = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
    }
    workflow = parse_workflow(api)
    assert workflow.format == "api"
    assert [(n.key, n.filename) for n in model_needs(workflow)] == [
        ("checkpoints", "m.safetensors")
    ]
    apply_settings(workflow, {"KSampler.seed": 42, "SaveImage.filename_prefix": "x"})
    assert api["3"]["inputs"]["seed"] == 42 and api["9"]["inputs"]["filename_prefix"] == "x"
    with pytest.raises(WorkflowError, match="has no input 'sead'"):
        apply_settings(workflow, {"KSampler.sead": 1})
