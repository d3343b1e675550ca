"""The training nodes in real graphs: data -> train -> save -> sample, checkpoints, resume, cancel."""

import threading
import time

import pytest
import torch

KNOBS = dict(
    steps=4, learning_rate=1e-3, rank=4, alpha=4.0, target_layers="attention", batch_size=1, gradient_accumulation=1,
    optimizer="AdamW", lr_schedule="constant", warmup_steps=0, training_dtype="fp32", gradient_checkpointing=False,
    seed=0, null_prompt_dropout=0.1, min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0,
    run_name="graph_run", checkpoint_every=2,
)


def _graph(architecture="sd15-tiny", filename="graph/subject", **overrides):
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture=architecture, seed=0)
    image = g.node("EmptyImage", id="image", width=64, height=64, batch_size=1, color=0x3366CC)
    data = g.node("DriftlessTrainingData", id="data", clip=model.out(1), captions="a photo of sks vase",
                  images=image.out(0), vae=model.out(2))
    train = g.node("DriftlessTrainLoRA", id="train", model=model.out(0), training_data=data.out(0), **{**KNOBS, **overrides})
    g.node("DriftlessSaveLoRA", id="save", lora=train.out(1), filename=filename, overwrite=True)
    g.node("SaveImage", id="plot", images=train.out(3), filename_prefix="loss_plot")
    pos = g.node("CLIPTextEncode", id="pos", clip=model.out(1), text="a photo of sks vase")
    neg = g.node("CLIPTextEncode", id="neg", clip=model.out(1), text="")
    latent = g.node("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    sampled = g.node("KSampler", id="sampler", model=train.out(0), positive=pos.out(0), negative=neg.out(0),
                     latent_image=latent.out(0), seed=1, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal",
                     denoise=1.0)
    decoded = g.node("VAEDecode", id="decode", samples=sampled.out(0), vae=model.out(2))
    g.node("SaveImage", id="samples", images=decoded.out(0), filename_prefix="trained")
    return g.finalize()


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
def test_train_save_sample_graph(run_prompt, comfy_host, architecture):
    from driftless.lora.files import load_lora

    result = run_prompt(_graph(architecture, filename=f"graph/{architecture}", run_name=f"run_{architecture}"))
    assert result.success, result.error
    loras = comfy_host.base_directory / "models" / "loras"
    saved = load_lora(loras / "graph" / f"{architecture}.safetensors")
    meta = saved.metadata
    assert meta["format"] == "driftless.lora.v1" and meta["steps"] == 4 and meta["rank"] == 4
    assert meta["prompts"] == ["a photo of sks vase"] and meta["regularizers"] == []
    assert len(meta["base_model_fingerprint"]) == 16
    run = loras / f"run_{architecture}"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents.")) == [
        "step_000002.safetensors", "step_000002.train-state", "step_000004.safetensors", "step_000004.train-state",
    ]
    assert len(result.files) == 2  # the loss plot and the sample
    assert "step 4/4" in result.log


def test_weight_decay_input_reaches_the_optimizer_and_the_file(run_prompt, comfy_host):
    """Without the input (a workflow saved before it existed) AdamW decays at 0.01; with 0 it does not, and the two
    runs differ by that alone."""
    from driftless.lora.files import load_lora

    loras = comfy_host.base_directory / "models" / "loras" / "graph"
    for name, extra in (("wd_default", {}), ("wd_zero", {"weight_decay": 0.0})):
        result = run_prompt(_graph(filename=f"graph/{name}", run_name=name, steps=2, checkpoint_every=0, **extra))
        assert result.success, result.error
    default, zero = load_lora(loras / "wd_default.safetensors"), load_lora(loras / "wd_zero.safetensors")
    assert default.metadata["training"]["weight_decay"] == 0.01 and zero.metadata["training"]["weight_decay"] == 0.0
    assert any(not torch.equal(default[k], zero[k]) for k in zero)


def test_resume_latest_through_the_graph(run_prompt, comfy_host):
    first = run_prompt(_graph(run_name="resumable", steps=2, filename="graph/resume_a"))
    assert first.success, first.error
    second = run_prompt(_graph(run_name="resumable", steps=4, resume_from="latest", filename="graph/resume_b"))
    assert second.success, second.error
    straight = run_prompt(_graph(run_name="straight", steps=4, filename="graph/resume_c"))
    assert straight.success, straight.error
    from driftless.lora.files import load_lora

    loras = comfy_host.base_directory / "models" / "loras" / "graph"
    resumed, direct = load_lora(loras / "resume_b.safetensors"), load_lora(loras / "resume_c.safetensors")
    for key in direct:
        torch.testing.assert_close(resumed[key], direct[key], rtol=0, atol=1e-6)


def test_invalid_settings_are_reported_before_running(run_prompt):
    problems = run_prompt(_graph(timestep_min=0.8, timestep_max=0.2), expect_valid=False)
    assert "train" in problems
    assert "0 <= min < max <= 1" in str(problems["train"])


def test_cancel_stops_training_and_keeps_the_last_checkpoint(run_prompt, comfy_host):
    import comfy.model_management

    from driftless.trainers.state import ResumeState, latest_state

    folder = comfy_host.base_directory / "models" / "loras" / "cancelled"

    def cancel_after_the_first_checkpoint():  # however slow the machine, the run has a checkpoint to keep
        deadline = time.monotonic() + 300
        while latest_state(folder) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        comfy.model_management.interrupt_current_processing(True)

    threading.Thread(target=cancel_after_the_first_checkpoint, daemon=True).start()
    result = run_prompt(_graph(run_name="cancelled", steps=100000, checkpoint_every=5, filename="graph/never"))
    assert result.interrupted and result.error is None
    last = latest_state(folder)
    assert last is not None and ResumeState(last).step % 5 == 0
    assert not (comfy_host.base_directory / "models" / "loras" / "graph" / "never.safetensors").exists()


def test_validation_images_at_a_fixed_seed(run_prompt, comfy_host):
    from comfy_execution.graph_utils import GraphBuilder

    prompt = _graph(run_name="validated", steps=4, checkpoint_every=0, filename="graph/validated", validation_every=2,
                    validation_prompt="a photo of sks vase", validation_seed=3, validation_steps=3, validation_cfg=4.0,
                    clip=["model", 1], vae=["model", 2], learning_rate=5e-2)
    prompt["validation_out"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 4], "filename_prefix": "val"}}
    result = run_prompt(prompt)
    assert result.success, result.error
    images = result.outputs["validation_out"]["images"]
    assert len(images) == 2  # steps 2 and 4
    from PIL import Image
    import numpy as np

    a, b = (np.asarray(Image.open(comfy_host.base_directory / "output" / i["subfolder"] / i["filename"])) for i in images)
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)  # same seed, different training progress


def test_validation_without_vae_fails_before_training(run_prompt):
    result = run_prompt(_graph(run_name="novae", validation_every=2))
    assert not result.success and "validation images need the CLIP and the VAE" in result.error["exception_message"]
