"""Every example workflow converts to API format and passes ComfyUI's validation (placeholder files where a
checkpoint, a photo or a metrics backbone is named); every tiny twin has the same graph with the tiny model swapped
in; the examples that end in metrics name the standard backbones (real) or the demo's random ones (tiny)."""

import json
import pathlib
import shutil

import pytest
from PIL import Image

from driftless.headless import demo_backbones, runner, workflow

EXAMPLES = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
SHAPES_DEMO = "personalize_shapes"  # runs on the pack's own pretrained model: no checkpoint, no tiny twin
CHECKPOINT_EXAMPLES = [name for name in EXAMPLES if name != SHAPES_DEMO]
WITH_METRICS = ["personalize_and_guide", "regularizer_comparison"]
METRICS_NODES = ("DriftlessPersonalizationMetrics", "DriftlessDriftMetrics")
# what a metrics backbone folder must hold to pass validation (its files are checked by name, not read)
BACKBONE_FILES = {"clip": ("model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"),
                  "dino": ("model.safetensors", "preprocessor_config.json")}


def _placeholders(prompt: dict, base) -> list:
    """Empty checkpoint files, blank photos and metrics backbone folders (a config.json naming the model type, the
    other files empty) named by the workflow: validation checks only that they exist. Returns the backbone folders
    made, for removal: the session's other tests list the backbone folders."""
    made = []
    for node in prompt.values():
        inputs = node["inputs"]
        assert node["class_type"] != "LoadImage", "the examples load photos with Driftless Load Images"
        if node["class_type"] == "CheckpointLoaderSimple":
            path = base / "models" / "checkpoints" / inputs["ckpt_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        if node["class_type"] == "DriftlessLoadImages":  # a file for each name or pattern (its * as 1)
            for line in inputs["files"].splitlines():
                path = base / "input" / line.strip().replace("*", "1")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8)).save(path)
        if node["class_type"] == "DriftlessFolderData":  # a folder with one photo
            path = base / "input" / inputs["folder"] / "placeholder.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)
        if node["class_type"] in METRICS_NODES:
            for role, model_type in (("clip", "clip"), ("dino", "vit")):
                folder = base / "models" / "driftless_metrics" / inputs[f"{role}_model"]
                if inputs[f"{role}_model"] == "none" or folder.exists():
                    continue
                folder.mkdir(parents=True)
                made.append(folder)
                (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
                for name in BACKBONE_FILES[role]:
                    (folder / name).write_bytes(b"")
    return made


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_validates(comfy_host, repo, name):
    ui = workflow.load_workflow_file(repo / "example_workflows" / f"{name}.json")
    prompt = workflow.to_api_format(ui, comfy_host.object_info())
    made = _placeholders(prompt, comfy_host.base_directory)
    try:
        outputs, problems = runner.validate(prompt, "example")
    finally:
        for folder in made:
            shutil.rmtree(folder)
    assert problems == {}, runner.format_validation_errors(problems, prompt)
    assert outputs
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    if name == SHAPES_DEMO:
        assert any(n["class_type"] == "DriftlessPretrainedShapesModel" for n in prompt.values())
        assert notes and "./driftless demo" in notes[0]["widgets_values"][0]
        return
    assert any(n["class_type"] == "CheckpointLoaderSimple" for n in prompt.values())
    assert notes and "models/checkpoints" in notes[0]["widgets_values"][0]


def test_metrics_backbones_are_checked_when_an_example_validates(comfy_host, repo):
    """Without the backbone folders the real example is refused, naming the folder to create."""
    ui = workflow.load_workflow_file(repo / "example_workflows" / "personalize_and_guide.json")
    prompt = workflow.to_api_format(ui, comfy_host.object_info())
    for folder in _placeholders(prompt, comfy_host.base_directory):
        shutil.rmtree(folder)
    _, problems = runner.validate(prompt, "example")
    text = runner.format_validation_errors(problems, prompt)
    assert "clip_model 'clip-vit-base-patch32' not found" in text and "dino_model 'dino-vits16' not found" in text


@pytest.mark.parametrize("name", WITH_METRICS)
def test_examples_end_in_metrics_with_their_backbones_named_in_the_note(repo, name):
    for path, clip, dino, where in (
        (repo / "example_workflows" / f"{name}.json", "clip-vit-base-patch32", "dino-vits16",
         "models/driftless_metrics/clip-vit-base-patch32/"),
        (repo / "example_workflows" / "tiny" / f"{name}_tiny.json", demo_backbones.CLIP, demo_backbones.DINO,
         "models/driftless_metrics/driftless_demo/"),
    ):
        ui = json.loads(path.read_text())
        metrics = [n for n in ui["nodes"] if n["type"] in METRICS_NODES]
        assert {n["type"] for n in metrics} == set(METRICS_NODES)
        for node in metrics:
            assert clip in node["widgets_values"] and dino in node["widgets_values"]
            assert not node["outputs"] or all(not o["links"] for o in node["outputs"])  # the graph ends there
        note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
        assert where in note and "Metrics" in note


@pytest.mark.parametrize("name", CHECKPOINT_EXAMPLES)
def test_tiny_twin_has_the_same_graph(repo, name):
    real = json.loads((repo / "example_workflows" / f"{name}.json").read_text())
    tiny = json.loads((repo / "example_workflows" / "tiny" / f"{name}_tiny.json").read_text())
    swap = {"CheckpointLoaderSimple": "DriftlessTinyModel"}
    assert [swap.get(n["type"], n["type"]) for n in real["nodes"]] == [n["type"] for n in tiny["nodes"]]
    assert real["links"] == tiny["links"]


def test_flux_twin_trains_and_guides(run_prompt, comfy_host, repo):
    """The Flux example's tiny twin (guidance-distilled Flux dev): training on the attention of the double- and
    single-stream blocks, then one row base | personalized (CFG 1, distilled guidance 3.5) | personalized with
    personalization guidance (real CFG 3 over distilled guidance 1.5). Training moved the model, and the guider
    gives another picture than the personalized model alone."""
    import numpy as np

    from driftless.headless.demo_photos import write_demo_photos

    write_demo_photos(comfy_host.base_directory / "input")
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "flux_personalize_and_guide_tiny.json")
    prompt = workflow.to_api_format(ui, comfy_host.object_info())
    assert {n["class_type"] for n in prompt.values()} >= {"FluxGuidance", "EmptySD3LatentImage", "DriftlessTrainLoRA"}
    result = run_prompt(prompt)
    assert result.success, result.error
    row = next(f for f in result.files if "samples" in f.name)
    pixels = np.asarray(Image.open(row)).astype(np.float64)
    size = 64
    assert pixels.shape[:2] == (size, 3 * size + 2 * 4)
    base, personalized, guided = (pixels[:, i * (size + 4): i * (size + 4) + size] for i in range(3))
    assert all(panel.std() > 1 for panel in (base, personalized, guided))  # no NaN came out as a flat image
    assert np.abs(base - personalized).mean() > 0.5
    assert np.abs(guided - personalized).mean() > 0.5


@pytest.mark.usefixtures("one_thread")
def test_folder_twin_trains_from_the_demo_folder(run_prompt, comfy_host, repo):
    """The folder example's tiny twin reads the demo's folder dataset (three sizes, two captions, a mask, a 2_ folder),
    lists what it read and trains with validation images."""
    from driftless.headless.demo_photos import write_demo_photos

    write_demo_photos(comfy_host.base_directory / "input")
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "personalize_from_folder_tiny.json")
    prompt = workflow.to_api_format(ui, comfy_host.object_info())
    result = run_prompt(prompt)
    assert result.success, result.error
    preview = next(key for key, node in prompt.items() if node["class_type"] == "PreviewAny")
    assert result.outputs[preview]["text"][0].splitlines() == [
        "driftless_demo/sks_cat_folder/2_closeups/cat_face.png: 48x80, x2: a close-up photo of a sks cat's face",
        "driftless_demo/sks_cat_folder/cat.png: 64x64, x1: a photo of a sks cat on a rug",
        "driftless_demo/sks_cat_folder/cat_wide.png: 80x48, x1, masked: a photo of sks cat",
    ]
    assert any("folder_validation" in f.name for f in result.files)
