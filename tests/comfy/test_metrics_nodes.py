"""The metrics nodes in real graphs: tiny model samples -> Personalization Metrics / Drift Metrics -> JSON report,
with tiny random CLIP / DINO folders in models/driftless_metrics and models/clip_vision."""

import json
import math

import numpy as np
import pytest
import torch

PROMPT = "a photo of sks dog"


@pytest.fixture(scope="module")
def metrics_models(comfy_host):
    from driftless.headless.demo_photos import write_demo_photos
    from driftless.tinymodels.metrics_backbones import save_clip, save_dino

    models = comfy_host.base_directory / "models"
    root = models / "driftless_metrics"
    if not (root / "clip-tiny").exists():
        save_clip(root / "clip-tiny", seed=0)
        save_dino(root / "facebook" / "dino-tiny", seed=1, version=1)
        save_dino(root / "dinov2-tiny", seed=2, version=2)
        save_clip(models / "clip_vision" / "clip-vision-tiny", seed=3, vision_only=True)
    write_demo_photos(comfy_host.base_directory / "input")
    return root


def _references(g, n=3):
    from driftless.headless.demo_photos import DEMO_FOLDER, NAMES

    loads = [g.node("LoadImage", id=f"ref{i}", image=f"{DEMO_FOLDER}/{NAMES[i]}") for i in range(n)]
    batch = loads[0]
    for i, load in enumerate(loads[1:], 1):
        batch = g.node("ImageBatch", id=f"refbatch{i}", image1=batch.out(0), image2=load.out(0))
    return batch


def _samples(g, model, seed=0, batch=4, prompt=PROMPT, tag=""):
    """A batch of tiny-model samples, 64x64, two euler steps."""
    pos = g.node("CLIPTextEncode", id=f"pos{tag}", clip=model.out(1), text=prompt)
    neg = g.node("CLIPTextEncode", id=f"neg{tag}", clip=model.out(1), text="")
    latent = g.node("EmptyLatentImage", id=f"latent{tag}", width=64, height=64, batch_size=batch)
    sampled = g.node("KSampler", id=f"sampler{tag}", model=model.out(0), positive=pos.out(0), negative=neg.out(0),
                     latent_image=latent.out(0), seed=seed, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal",
                     denoise=1.0)
    return g.node("VAEDecode", id=f"decode{tag}", samples=sampled.out(0), vae=model.out(2))


def _metrics_graph(sample=True, **overrides):
    """Tiny-model samples (or, with sample=False, the photos themselves: no sampling) measured against the photos."""
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    references = _references(g)
    if sample:
        generated = _samples(g, g.node("DriftlessTinyModel", id="model", architecture="sd15-tiny", seed=0))
    else:
        generated = g.node("ImageBatch", id="generated", image1=references.out(0), image2=references.out(0))
    inputs = dict(generated_images=generated.out(0), reference_images=references.out(0), prompts=PROMPT,
                  identifier="sks", class_noun="dog", clip_model="clip-tiny", dino_model="facebook/dino-tiny",
                  filename_prefix="metrics/run")
    metrics = g.node("DriftlessPersonalizationMetrics", id="metrics", **{**inputs, **overrides})
    for i, name in enumerate(("clip_t", "clip_i", "dino", "report_file")):
        g.node("PreviewAny", id=f"show_{name}", source=metrics.out(i))
    return g.finalize()


def _options(spec):
    kind, *rest = spec
    return kind if isinstance(kind, list) else rest[0]["options"]


def test_backbone_folders_are_listed_by_kind(comfy_host, metrics_models):
    from driftless.headless.demo_backbones import DEMO_FOLDER

    inputs = comfy_host.object_info()["DriftlessPersonalizationMetrics"]["input"]["required"]
    # the session's example runs may have added the demo's backbones (driftless_demo/...)
    listed = {role: [o for o in _options(inputs[f"{role}_model"]) if not o.startswith(DEMO_FOLDER + "/")]
              for role in ("clip", "dino")}
    assert listed["clip"] == ["none", "clip-tiny", "clip_vision/clip-vision-tiny"]
    assert listed["dino"] == ["none", "dinov2-tiny", "facebook/dino-tiny"]


def test_generate_then_measure_writes_the_report(run_prompt, comfy_host, metrics_models):
    result = run_prompt(_metrics_graph())
    assert result.success, result.error
    reports = [f for f in result.files if f.suffix == ".json"]
    assert len(reports) == 1 and reports[0].parent.name == "metrics"  # listed by the headless runner
    report = json.loads(reports[0].read_text())
    assert report["format"] == "driftless.metrics.v1" and report["counts"] == {"generated": 4, "reference": 3}
    assert set(report["metrics"]) == {"clip_t", "clip_i", "dino"}
    assert report["clip_t_prompts"] == ["a photo of dog"] * 4 and report["prompts"] == [PROMPT] * 4
    assert report["backbones"]["dino"]["architecture"] == "ViTModel"
    shown = {k: result.outputs[f"show_{k}"]["text"][0] for k in ("clip_t", "clip_i", "dino", "report_file")}
    for key, entry in report["metrics"].items():
        values = entry["per_image"]
        assert len(values) == 4 and all(-1 <= v <= 1 for v in values)
        assert entry["mean"] == pytest.approx(np.mean(values)) and entry["std"] == pytest.approx(np.std(values, ddof=1))
        assert float(shown[key]) == pytest.approx(entry["mean"], abs=1e-12)  # the FLOAT output is the mean
    assert reports[0].as_posix().endswith(shown["report_file"])
    table = result.outputs["metrics"]["text"][0]
    assert "CLIP-T" in table and "DINO" in table and "clip-tiny" in table and shown["report_file"] in table
    preview = result.outputs["metrics"]["images"]  # the table as an image on the node
    assert len(preview) == 1 and preview[0]["type"] == "temp" and preview[0]["filename"].endswith(".png")


def test_node_output_equals_the_metrics_computed_directly(run_prompt, comfy_host, metrics_models):
    """Generated = the photos themselves (exact 8-bit values), so the expected numbers can be computed outside."""
    from comfy_execution.graph_utils import GraphBuilder
    from PIL import Image

    from driftless.headless.demo_photos import DEMO_FOLDER, NAMES
    from driftless.metrics.backbones import load_backbone
    from driftless.metrics.evaluate import personalization_metrics

    g = GraphBuilder(prefix="")
    g.node("DriftlessPersonalizationMetrics", id="metrics", generated_images=_references(g, 3).out(0),
           reference_images=g.node("LoadImage", id="one", image=f"{DEMO_FOLDER}/{NAMES[0]}").out(0),
           prompts="a sks dog\na photo of sks\nsks dog on the beach", identifier="sks", class_noun="dog",
           clip_model="clip-tiny", dino_model="dinov2-tiny", filename_prefix="metrics/direct")
    result = run_prompt(g.finalize())
    assert result.success, result.error
    report = json.loads(next(f for f in result.files if f.suffix == ".json").read_text())

    folder = comfy_host.base_directory / "input" / DEMO_FOLDER
    photos = torch.stack([torch.from_numpy(np.asarray(Image.open(folder / n).convert("RGB"), dtype=np.float32) / 255)
                          for n in NAMES])
    expected = personalization_metrics(photos, photos[:1], ["a sks dog", "a photo of sks", "sks dog on the beach"],
                                       clip=load_backbone(metrics_models / "clip-tiny"),
                                       dino=load_backbone(metrics_models / "dinov2-tiny"), identifiers=["sks"],
                                       class_noun="dog")
    assert report["clip_t_prompts"] == ["a dog", "a photo of dog", "dog on the beach"]
    for key, scores in expected.scores.items():
        assert report["metrics"][key]["per_image"] == pytest.approx(scores.values, abs=1e-6)


def test_drift_between_base_and_another_model_at_the_same_seeds(run_prompt, metrics_models):
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    base = g.node("DriftlessTinyModel", id="base", architecture="sd15-tiny", seed=0)
    changed = g.node("DriftlessTinyModel", id="changed", architecture="sd15-tiny", seed=1)  # stands in for a personalized model
    base_images = _samples(g, base, seed=7, batch=2, prompt="a photo of a dog", tag="_base")
    changed_images = _samples(g, changed, seed=7, batch=2, prompt="a photo of a dog", tag="_changed")
    again = _samples(g, base, seed=7, batch=2, prompt="a photo of a dog", tag="_again")
    common = dict(clip_model="clip_vision/clip-vision-tiny", dino_model="dinov2-tiny", prompts="a photo of a dog\nsks dog",
                  identifier="sks")
    g.node("DriftlessDriftMetrics", id="drift", base_images=base_images.out(0), personalized_images=changed_images.out(0),
           filename_prefix="drift/changed", **common)
    g.node("DriftlessDriftMetrics", id="same", base_images=base_images.out(0), personalized_images=again.out(0),
           filename_prefix="drift/same", **common)
    result = run_prompt(g.finalize())
    assert result.success, result.error
    reports = {f.name.split("_")[0]: json.loads(f.read_text()) for f in result.files if f.suffix == ".json"}
    assert set(reports) == {"changed", "same"}
    for entry in reports["same"]["metrics"].values():
        assert entry["per_pair"] == pytest.approx([1.0, 1.0], abs=1e-5)  # same model, same seed: no drift
    changed_report = reports["changed"]
    assert changed_report["kind"] == "drift" and changed_report["counts"] == {"pairs": 2}
    assert all(v < 0.9999 for v in changed_report["metrics"]["dino"]["per_pair"])
    assert "sks dog" in changed_report["notes"][0]  # a prompt with the identifier is flagged
    assert "Drift" in result.outputs["drift"]["text"][0]


def test_missing_weights_are_reported_before_anything_runs(run_prompt, comfy_host, metrics_models):
    problems = run_prompt(_metrics_graph(False, clip_model="openai/clip-vit-base-patch32"), expect_valid=False)
    text = str(problems["metrics"])
    assert "openai/clip-vit-base-patch32" in text and "not found" in text
    assert str(comfy_host.base_directory / "models" / "driftless_metrics") in text
    assert "model.safetensors" in text and "preprocessor_config.json" in text and "tokenizer" in text
    problems = run_prompt(_metrics_graph(False, clip_model="none", dino_model="none"), expect_valid=False)
    assert "both are 'none'" in str(problems["metrics"])
    problems = run_prompt(_metrics_graph(False, dino_model="clip-tiny"), expect_valid=False)
    assert "not a dino model" in str(problems["metrics"])
    incomplete = metrics_models / "dino-incomplete"
    incomplete.mkdir(exist_ok=True)
    (incomplete / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    try:
        problems = run_prompt(_metrics_graph(False, dino_model="dino-incomplete"), expect_valid=False)
    finally:
        (incomplete / "config.json").unlink()
        incomplete.rmdir()
    text = str(problems["metrics"])
    assert str(incomplete) in text and "model.safetensors" in text and "preprocessor_config.json" in text


def test_prompt_count_mismatch_fails_with_a_clear_message(run_prompt, metrics_models):
    result = run_prompt(_metrics_graph(False, prompts="a\nb\nc\nd"))
    assert not result.success and "4 lines for 6 images" in result.error["exception_message"]


def test_dino_only_leaves_clip_outputs_nan(run_prompt, metrics_models):
    result = run_prompt(_metrics_graph(False, clip_model="none", filename_prefix="metrics/dino_only"))
    assert result.success, result.error
    assert math.isnan(float(result.outputs["show_clip_t"]["text"][0]))
    assert not math.isnan(float(result.outputs["show_dino"]["text"][0]))
