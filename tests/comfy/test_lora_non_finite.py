"""A LoRA holding NaN or Inf is refused at every node it can enter through, naming the file or input and a layer:
Load LoRA, Save LoRA, the guider's lora and weak_lora, Train LoRA's initial_lora (tests/unit/test_lora_non_finite.py
covers the files, training states and concept pools underneath)."""

import math

import pytest
import torch


@pytest.fixture(scope="module")
def setup(comfy_host):
    """(tiny SD1.5 model, CLIP, its finite native LoRA, the same with NaN in one up weight, that key)."""
    from driftless.lora.adapter import LoraAdapter
    from driftless.tinymodels.build import build_tiny_model

    model, clip, _ = build_tiny_model("sd15-tiny", 0)
    adapter = LoraAdapter.for_model(model.model.diffusion_model, "attention", 4, 4.0, torch.Generator().manual_seed(0))
    lora = adapter.lora_state_dict()
    key = sorted(k for k in lora if k.endswith(".lora_up.weight"))[0]
    broken = dict(lora)
    broken[key] = lora[key].clone()
    broken[key][0, 0] = math.nan
    return model, clip, lora, broken, key


def test_load_lora_refuses_the_file_naming_it_and_a_layer(comfy_host, setup):
    from driftless.lora.files import NonFiniteLora
    from driftless.lora.storage import save_safetensors_atomic
    from driftless.nodes.lora_files import LoadLora

    _, _, _, broken, key = setup
    path = comfy_host.base_directory / "models" / "loras" / "nonfinite" / "broken.safetensors"
    save_safetensors_atomic(broken, path)
    with pytest.raises(NonFiniteLora, match=rf"LoRA file {path} holds NaN or Inf in 1 of its \d+ tensors \(first: {key}"):
        LoadLora.execute(lora_name="nonfinite/broken.safetensors")


def test_save_lora_refuses_and_writes_nothing(comfy_host, setup):
    from driftless.lora.files import NonFiniteLora
    from driftless.nodes.lora_files import SaveLora

    model, _, lora, broken, key = setup
    folder = comfy_host.base_directory / "models" / "loras" / "nonfinite_save"
    for fmt in ("comfyui", "kohya"):
        with pytest.raises(NonFiniteLora, match=rf"the LoRA to be written to {folder}/out_{fmt}.safetensors holds NaN"):
            SaveLora.execute(lora=broken, filename=f"nonfinite_save/out_{fmt}", overwrite=True, format=fmt, model=model)
    assert not folder.exists()
    SaveLora.execute(lora=lora, filename="nonfinite_save/fine", overwrite=True)
    assert (folder / "fine.safetensors").is_file()


def test_the_guider_refuses_it_at_either_input(setup):
    from driftless.lora.files import NonFiniteLora
    from driftless.nodes.guider import PersonalizationGuider

    model, clip, lora, broken, key = setup
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks dog"))
    knobs = dict(model=model, positive=positive, clip=clip, cfg=4.0, weak_strength=0.3, schedule="constant",
                 weak_strength_end=0.3, start=0.0, end=1.0)
    with pytest.raises(NonFiniteLora, match=rf"the LoRA at the guider's lora input holds NaN .*first: {key}"):
        PersonalizationGuider.execute(lora=broken, mode="personalization", **knobs)
    with pytest.raises(NonFiniteLora, match=rf"the LoRA at the guider's weak_lora input holds NaN .*first: {key}"):
        PersonalizationGuider.execute(lora=lora, weak_lora=broken, mode="autoguidance", **knobs)
    assert PersonalizationGuider.execute(lora=lora, mode="personalization", **knobs).result[0] is not None


def test_train_lora_refuses_it_as_initial_lora_before_training(tiny_data, setup):
    """Before: the first step's loss was NaN and the run stopped blaming the learning rate."""
    from driftless.lora.files import NonFiniteLora
    from driftless.nodes.train_lora import TrainLora
    from driftless.trainers.config import TrainConfig

    model, _, _, data = tiny_data()
    _, _, _, broken, key = setup
    d = TrainConfig()
    knobs = dict(steps=2, learning_rate=d.learning_rate, rank=d.rank, alpha=d.alpha, target_layers=d.targets,
                 batch_size=1, gradient_accumulation=1, optimizer=d.optimizer, lr_schedule=d.schedule, warmup_steps=0,
                 training_dtype="fp32", gradient_checkpointing=False, seed=0, null_prompt_dropout=0.0,
                 min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0)
    with pytest.raises(NonFiniteLora) as caught:
        TrainLora.execute(model=model, training_data=data, run_name="nonfinite", checkpoint_every=0,
                          initial_lora=broken, **knobs)
    assert str(caught.value).startswith("the LoRA at Train LoRA's initial_lora input holds NaN or Inf")
    assert f"first: {key}" in str(caught.value)
