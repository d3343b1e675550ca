"""The headless runner: UI-format conversion, validation before execution, errors, interruption."""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from driftless.headless import runner, workflow


def test_ui_demo_converts_to_the_api_graph_it_draws(comfy_host, repo):
    """The UI-format demo becomes an API prompt with the same nodes, links and widget values."""
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "personalize_and_guide_tiny.json")
    prompt = workflow.to_api_format(ui, comfy_host.object_info())
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    assert "MarkdownNote" not in by_type  # frontend-only
    assert len(by_type["DriftlessLoadImages"]) == 1 and len(by_type["KSampler"]) == 3 and len(by_type["SaveImage"]) == 4
    photos_id = by_type["DriftlessLoadImages"][0]
    assert prompt[photos_id]["inputs"] == {"files": "driftless_demo/sks_cat_*.png", "size": 0}
    train_id = by_type["DriftlessTrainLoRA"][0]
    train = prompt[train_id]["inputs"]
    assert (train["steps"], train["learning_rate"], train["rank"], train["target_layers"]) == (30, 1e-3, 8, "attention")
    assert train["model"] == [by_type["DriftlessTinyModel"][0], 0]
    guider = prompt[by_type["DriftlessPersonalizationGuider"][0]]["inputs"]
    assert guider["model"] == [train_id, 0] and guider["lora"] == [train_id, 1] and guider["weak_strength"] == 0.3
    samplers = {prompt[i]["_meta"]["title"]: prompt[i]["inputs"] for i in by_type["KSampler"]}
    base = samplers["Sample (base)"]
    # positional widgets_values with the UI-only "fixed" (control_after_generate) skipped
    assert (base["seed"], base["steps"], base["cfg"], base["sampler_name"]) == (42, 12, 5.0, "euler")
    assert base["model"] == [by_type["DriftlessTinyModel"][0], 0]
    # it ends in the metrics: the guided samples against the photos, and drift on the prior prompt at one seed
    from driftless.headless import demo_backbones

    metrics = prompt[by_type["DriftlessPersonalizationMetrics"][0]]["inputs"]
    guided_decode = prompt[metrics["generated_images"][0]]["inputs"]
    assert prompt[guided_decode["samples"][0]]["class_type"] == "SamplerCustomAdvanced"
    assert metrics["reference_images"] == [photos_id, 0]  # the training photos
    assert (metrics["prompts"], metrics["identifier"], metrics["class_noun"]) == ("a photo of sks cat on a beach", "sks", "cat")
    assert (metrics["clip_model"], metrics["dino_model"]) == (demo_backbones.CLIP, demo_backbones.DINO)
    drift = prompt[by_type["DriftlessDriftMetrics"][0]]["inputs"]
    prior = {side: prompt[prompt[drift[f"{side}_images"][0]]["inputs"]["samples"][0]]["inputs"]
             for side in ("base", "personalized")}
    assert prior["base"]["model"] == [by_type["DriftlessTinyModel"][0], 0] and prior["personalized"]["model"] == [train_id, 0]
    assert prior["base"]["positive"] == prior["personalized"]["positive"] and prior["base"]["seed"] == prior["personalized"]["seed"]
    assert prompt[prior["base"]["positive"][0]]["inputs"]["text"] == drift["prompts"] == "a photo of a cat on a beach"


def test_invalid_widget_value_is_reported_with_the_node(run_prompt, txt2img):
    prompt = txt2img()
    prompt["model"]["inputs"]["architecture"] = "sd99-huge"
    problems = run_prompt(prompt, expect_valid=False)
    message = runner.format_validation_errors(problems, prompt)
    assert "node #model DriftlessTinyModel" in message and "sd99-huge" in message


def test_execution_error_names_the_failing_node(run_prompt, comfy_host):
    """A checkpoint file that passes validation (it is listed) but is not a checkpoint fails in its node."""
    ckpt_dir = comfy_host.base_directory / "models" / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "placeholder.safetensors").write_bytes(b"not a checkpoint")
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "placeholder.safetensors"}},
        "enc": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "x"}},
        "out": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["enc", 0]}},
        "sink": {"class_type": "PreviewAny", "inputs": {"source": ["out", 0]}},
    }
    result = run_prompt(prompt)
    assert not result.success and not result.interrupted
    assert result.error["node_id"] == "ckpt" and result.error["node_type"] == "CheckpointLoaderSimple"


def test_interrupt_stops_a_long_run_within_a_step(run_prompt, txt2img, monkeypatch):
    """What POST /interrupt and Ctrl+C do: the flag is raised (here from another thread once sampling has made its
    third step, not after a fixed time: on a loaded machine loading the model can take seconds); the next progress
    tick ends the run."""
    import comfy.model_management
    import comfy.sample

    original = comfy.sample.sample

    def sample_then_interrupt(*args, callback=None, **kwargs):
        def on_step(step, *rest, **more):
            if step == 2:
                threading.Thread(target=comfy.model_management.interrupt_current_processing, args=(True,)).start()
            return callback(step, *rest, **more) if callback else None

        return original(*args, callback=on_step, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", sample_then_interrupt)
    prompt = txt2img(steps=5000)
    start = time.perf_counter()
    result = run_prompt(prompt)
    elapsed = time.perf_counter() - start
    assert result.interrupted and not result.success
    assert elapsed < 30, elapsed  # 5000 steps would take minutes
    assert "step" in result.log  # progress was reported before the interrupt


def _cli(args, repo, env_extra=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "driftless.headless", *args], capture_output=True, text=True, env=env, timeout=300, cwd=repo
    )


def test_cli_exit_codes_and_messages(repo, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "KSampler",}}')
    out = _cli(["run", str(bad), "--base-directory", str(tmp_path / "base")], repo)
    assert out.returncode == 2 and f"{bad}:1:33: malformed JSON" in out.stderr

    out = _cli(["run", str(bad)], repo, {"DRIFTLESS_COMFYUI": str(tmp_path / "nowhere")})
    assert out.returncode == 2  # the JSON error comes first; a good file reaches the ComfyUI check
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"1": {"class_type": "DriftlessTinyModel", "inputs": {}}}))
    out = _cli(["run", str(good)], repo, {"DRIFTLESS_COMFYUI": str(tmp_path / "nowhere")})
    assert out.returncode == 2 and "./driftless setup" in out.stderr and "not a ComfyUI folder" in out.stderr

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"5": {"class_type": "TotallyUnknownNode", "inputs": {}}}))
    out = _cli(["run", str(unknown), "--base-directory", str(tmp_path / "base")], repo)
    assert out.returncode == 2 and "node 5 ('TotallyUnknownNode')" in out.stderr
    assert "[runner] node 1/" not in out.stdout  # nothing executed


@pytest.mark.timeout(300)
def test_cli_tiny_demo_runs_and_lists_its_outputs(repo, tmp_path):
    """`demo --tiny` writes its photos and metric backbones, trains, samples and ends in two metrics reports, whose
    tables it prints."""
    from driftless.headless import demo_backbones

    out = _cli(["demo", "--tiny", "--base-directory", str(tmp_path / "base"), "--output-directory", str(tmp_path / "out")], repo)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DriftlessTrainLoRA" in out.stdout and "step 30/30" in out.stdout and "step 12/12" in out.stdout
    written = [pathlib.Path(line.split("wrote ", 1)[1]) for line in out.stdout.splitlines() if "wrote " in line]
    assert all(p.stat().st_size > 0 and p.is_relative_to(tmp_path / "out") for p in written)  # no temp previews
    images = sorted(p.name for p in written if p.suffix == ".png")
    assert images == ["base_00001_.png", "base_00002_.png", "loss_00001_.png", "personalized_00001_.png",
                      "personalized_00002_.png", "prior_00001_.png", "prior_00002_.png"]
    reports = {p.name.split("_")[0]: json.loads(p.read_text()) for p in written if p.suffix == ".json"}
    assert set(reports) == {"metrics", "drift"}
    assert set(reports["metrics"]["metrics"]) == {"clip_t", "clip_i", "dino"}
    assert reports["metrics"]["counts"] == {"generated": 2, "reference": 3}
    assert reports["drift"]["counts"] == {"pairs": 2} and set(reports["drift"]["metrics"]) == {"clip_i", "dino"}
    assert reports["metrics"]["backbones"]["clip"]["name"] == demo_backbones.CLIP
    assert "(Metrics (guided samples vs photos)): Personalization metrics" in out.stdout and "CLIP-T" in out.stdout
    assert "Drift (base vs personalized, same seeds)" in out.stdout
    assert "saved driftless_demo/lora.safetensors" in out.stdout
    assert (tmp_path / "base" / "models" / "loras" / "driftless_demo" / "lora.safetensors").exists()
    backbones = tmp_path / "base" / "models" / "driftless_metrics"
    assert all((backbones / name / "model.safetensors").exists() for name in demo_backbones.NAMES)


@pytest.mark.timeout(300)
def test_cli_demo_personalizes_the_pretrained_shapes_model(comfy_host, repo, tmp_path):
    """The default demo on an empty cache: the shipped shapes model (nothing pretrains) -> its subject pictures ->
    300 LoRA steps -> base | personalized samples of three prompts, each scored by the classifier shipped with it."""
    from PIL import Image

    from driftless.shapes import dataset

    out = _cli(["demo", "--base-directory", str(tmp_path / "base"), "--output-directory", str(tmp_path / "out")], repo,
               {"DRIFTLESS_CACHE": str(tmp_path / "empty-cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pretraining" not in out.stdout + out.stderr and "step 300/300" in out.stdout
    assert "demo metric backbones" not in out.stdout  # the shapes demo scores with its own classifier
    pictures = sorted((tmp_path / "base" / "input" / "driftless_demo").glob("sks_shape_*.png"))
    assert len(pictures) == 4 and Image.open(pictures[0]).size == (dataset.SIZE, dataset.SIZE)
    written = [pathlib.Path(line.split("wrote ", 1)[1]) for line in out.stdout.splitlines() if "wrote " in line]
    rows = {p.name for p in written if p.suffix == ".png"}
    assert rows == {"loss_00001_.png"} | {f"{kind}_0000{i}_.png" for kind in ("subject", "new_context", "prior") for i in range(1, 5)}
    # one picture per seed: base | personalized (| guided for the subject prompt), 32x32 panels 2 px apart, 4x enlarged
    assert Image.open(tmp_path / "out" / "driftless_shapes" / "subject_00001_.png").size == (4 * (3 * 32 + 4), 4 * 32)
    assert Image.open(tmp_path / "out" / "driftless_shapes" / "prior_00001_.png").size == (4 * (2 * 32 + 2), 4 * 32)
    reports = [json.loads(p.read_text()) for p in written if p.suffix == ".json"]
    prompts = sorted(r["prompt"] for r in reports)
    assert prompts == sorted([dataset.subject_caption()] * 2 + ["a blue sks on a black background",
                                                                "a green square on a black background"])
    for report in reports:
        scores = report["scores"]
        assert report["seeds"] == 4 and scores["pixel RMSE to base"]["base"] == 0.0
        assert scores["pixel RMSE to base"]["personalized"] > 0  # the LoRA changed what the model draws
        assert 0 <= scores["subject fidelity"]["personalized"] <= 1
    prior = next(r for r in reports if r["prompt"].startswith("a green square"))
    assert {"shape is square", "colour is green"} <= set(prior["scores"])
    # the shipped model: the LoRA pulls the subject prompt towards the subject and keeps the prior prompt's shape and colour
    subject = next(r for r in reports if r["prompt"] == dataset.subject_caption())["scores"]["subject fidelity"]
    assert subject["personalized"] > subject["base"] + 0.03
    assert prior["scores"]["shape is square"]["personalized"] >= 0.75 and prior["scores"]["colour is green"]["personalized"] >= 0.75
    assert not (tmp_path / "empty-cache").exists()
    assert "Shapes scores, 'a green square on a black background' (4 seeds)" in out.stdout
    assert (tmp_path / "base" / "models" / "loras" / "driftless_shapes" / "lora.safetensors").exists()


def test_cli_dry_run_saves_the_api_prompt_and_runs_nothing(repo, tmp_path):
    out_file = tmp_path / "api.json"
    out = _cli(["run", str(repo / "example_workflows" / "tiny" / "guidance_grid_tiny.json"), "--dry-run",
                "--save-api", str(out_file), "--base-directory", str(tmp_path / "base")], repo)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "is valid (26 nodes" in out.stdout and "[runner] node 1/" not in out.stdout
    prompt = json.loads(out_file.read_text())
    assert sum(n["class_type"] == "DriftlessPersonalizationGuider" for n in prompt.values()) == 4
