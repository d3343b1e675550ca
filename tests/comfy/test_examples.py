"""Every example workflow converts to API format and passes ComfyUI's validation (placeholder files where a
checkpoint or photo is named); every tiny twin has the same graph with the tiny model swapped in."""

import json
import pathlib

import pytest
from PIL import Image

from driftless.headless import runner, workflow

EXAMPLES = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))


def _placeholders(prompt: dict, base):
    """Empty checkpoint files and blank photos named by the workflow (validation checks only that they exist)."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            path = base / "models" / "checkpoints" / inputs["ckpt_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        if node["class_type"] == "LoadImage":
            path = base / "input" / inputs["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_validates(comfy_host, repo, name):
    ui = workflow.load_workflow_file(repo / "example_workflows" / f"{name}.json")
    prompt = workflow.to_api_format(ui, comfy_host.object_info())
    _placeholders(prompt, comfy_host.base_directory)
    outputs, problems = runner.validate(prompt, "example")
    assert problems == {}, runner.format_validation_errors(problems, prompt)
    assert outputs
    assert any(n["class_type"] == "CheckpointLoaderSimple" for n in prompt.values())
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and "models/checkpoints" in notes[0]["widgets_values"][0]


@pytest.mark.parametrize("name", EXAMPLES)
def test_tiny_twin_has_the_same_graph(repo, name):
    real = json.loads((repo / "example_workflows" / f"{name}.json").read_text())
    tiny = json.loads((repo / "example_workflows" / "tiny" / f"{name}_tiny.json").read_text())
    swap = {"CheckpointLoaderSimple": "DriftlessTinyModel"}
    assert [swap.get(n["type"], n["type"]) for n in real["nodes"]] == [n["type"] for n in tiny["nodes"]]
    assert real["links"] == tiny["links"]
