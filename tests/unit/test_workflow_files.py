"""Workflow files: malformed JSON, format detection and unknown node types, without ComfyUI."""

import json

import pytest

from driftless.headless import workflow

OBJECT_INFO = {"KSampler": {}, "CLIPTextEncode": {}, "DriftlessTinyModel": {}}


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "1": {"class_type": "KSampler",\n  "inputs": {}\n}\n')  # missing a closing brace
    with pytest.raises(workflow.WorkflowError) as info:
        workflow.load_workflow_file(path)
    assert str(info.value).startswith(f"{path}:5:1: malformed JSON")


def test_missing_and_non_object_files(tmp_path):
    with pytest.raises(workflow.WorkflowError, match="no such file"):
        workflow.load_workflow_file(tmp_path / "absent.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(workflow.WorkflowError, match="JSON object, found list"):
        workflow.load_workflow_file(tmp_path / "list.json")


def test_format_detection(repo):
    ui = json.loads((repo / "example_workflows" / "tiny" / "personalize_and_guide_tiny.json").read_text())
    api = {"1": {"class_type": "KSampler", "inputs": {}}}
    assert workflow.is_ui_format(ui) and not workflow.is_api_format(ui)
    assert workflow.is_api_format(api) and not workflow.is_ui_format(api)
    with pytest.raises(workflow.WorkflowError, match="neither UI format"):
        workflow.to_api_format({"foo": 1}, OBJECT_INFO)


def test_unknown_node_type_is_named_before_execution():
    api = {"1": {"class_type": "KSampler", "inputs": {}}, "7": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(workflow.WorkflowError) as info:
        workflow.to_api_format(api, OBJECT_INFO, source="wf.json")
    assert "node 7 ('NoSuchNode')" in str(info.value) and "wf.json" in str(info.value)


def test_unknown_types_in_ui_format_skip_frontend_only_nodes():
    ui = {
        "nodes": [
            {"id": 1, "type": "KSampler"},
            {"id": 2, "type": "MarkdownNote"},
            {"id": 3, "type": "Reroute"},
            {"id": 4, "type": "MissingPackNode"},
        ],
        "links": [],
    }
    assert workflow.unknown_node_types(ui, OBJECT_INFO) == [("4", "MissingPackNode")]
