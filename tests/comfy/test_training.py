"""Train LoRA: input model untouched, files the stock loader applies, exact resume, safe failures."""

import logging

import pytest
import torch

from driftless.trainers.config import TrainConfig

FAST = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.2, targets="all linear+conv")


def _predict(model, context, seed=0):
    """The model's x̂0 on a fixed noisy input, with `model` loaded the way samplers load it."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([3.0, 0.5]), c_crossattn=context.repeat(2, 1, 1)).clone()


def _sample(model, clip, seed=3):
    import nodes

    pos = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks cat"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return nodes.common_ksampler(model, seed, 6, 4.0, "euler", "normal", pos, neg, latent)[0]["samples"]


def test_input_model_is_untouched_and_the_lora_changes_the_output(tiny_data):
    from driftless.trainers.loop import train_lora

    model, clip, _, data = tiny_data(n=1)  # a single image works
    context = data.conditionings[0][0][0]
    before = _predict(model, context)
    result = train_lora(model, data, TrainConfig(steps=8, **FAST))
    trained = _predict(result.model, context)
    after = _predict(model, context)
    assert torch.equal(before, after)  # bit-identical: only a clone got the adapter
    assert (trained - before).abs().max() > 1e-3
    assert len(result.losses) == 8 and all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
def test_saved_file_through_stock_lora_loader_samples_like_the_trained_model(tiny_data, comfy_host, caplog, architecture):
    """The file loads in LoraLoader with every key applied; sampling matches the trainer's MODEL to 1e-5."""
    import comfy.sd
    import nodes

    from driftless.lora.files import LoraWeights, load_lora, save_lora
    from driftless.trainers.loop import train_lora

    model, clip, _, data = tiny_data(architecture)
    result = train_lora(model, data, TrainConfig(steps=6, **FAST))
    folder = comfy_host.base_directory / "models" / "loras"
    path = save_lora(LoraWeights(result.adapter.lora_state_dict(), {"rank": 4}), folder, f"test/{architecture}")
    assert load_lora(path).metadata == {"rank": 4}

    name = path.relative_to(folder).as_posix()
    with caplog.at_level(logging.WARNING):
        loaded_model, _ = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 0.0)
    assert "not loaded" not in caplog.text.lower()
    lora_keys = {f"{k[: -len('.lora_up.weight')]}.weight" for k in result.adapter.lora_state_dict() if k.endswith(".lora_up.weight")}
    assert set(loaded_model.patches) == lora_keys  # every LoRA layer patched, nothing else

    ours = _sample(result.model, clip)
    stock = _sample(loaded_model, clip)
    base = _sample(model, clip)
    # fp32 rounding only: the random tiny model's samples reach a few hundred, so compare relative to that
    assert (ours - stock).abs().max() <= 1e-5 * stock.abs().max()
    assert (ours - base).abs().max() > 1e-2 * stock.abs().max()


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sd35-tiny", "flux-dev-tiny"])
def test_resume_continues_exactly(tiny_data, checkpoints, architecture):
    """4 steps + resume + 4 steps equals 8 steps straight (CPU, fp32), on a UNet and both DiT families."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.state import ResumeState

    model, _, _, data = tiny_data(architecture, n=3)
    config = TrainConfig(steps=8, checkpoint_every=4, batch_size=2, **FAST)
    straight = train_lora(model, data, config)
    train_lora(model, data, TrainConfig(**{**config.as_dict(), "steps": 4}), on_checkpoint=checkpoints.save)
    resumed = train_lora(model, data, config, resume=ResumeState(checkpoints.paths[0]))
    a, b = straight.adapter.lora_state_dict(), resumed.adapter.lora_state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["AdamW", "AdamW8bit", "Prodigy"])
def test_resume_continues_bit_exactly_with_each_optimizer(tiny_data, tmp_path, one_thread, optimizer):
    """4 steps + resume + 4 steps equals 8 steps straight bit for bit, for AdamW and the lighter optimizers (their
    state goes through the state file; rank 8 gives 8-bit AdamW both 8-bit and 32-bit moments), with a cosine schedule
    over Prodigy's own step size."""
    from driftless.trainers import optimizers
    from driftless.trainers.loop import train_lora
    from driftless.trainers.state import ResumeState, save_state

    if optimizers.missing_package(optimizer):
        pytest.skip(optimizers.missing_package(optimizer))
    model, _, _, data = tiny_data(n=3)
    settings = {**FAST, "rank": 8, "alpha": 8.0, "learning_rate": 1.0 if optimizer == "Prodigy" else FAST["learning_rate"]}
    config = TrainConfig(steps=8, checkpoint_every=4, schedule="cosine", optimizer=optimizer, **settings)

    def checkpoint(**state):  # the cosine schedule depends on the total steps: resume from the 8-step run's own state
        if state["step"] == 4:
            save_state(tmp_path / "s.train-state", **state)

    straight = train_lora(model, data, config, on_checkpoint=checkpoint)
    state = ResumeState(tmp_path / "s.train-state")
    if optimizer == "AdamW8bit":
        dtypes = {v.dtype for k, v in state.tensors.items() if k.endswith(".state1")}
        assert dtypes == {torch.uint8, torch.float32}
    resumed = train_lora(model, data, config, resume=state)
    a, b = straight.adapter.lora_state_dict(), resumed.adapter.lora_state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.losses == straight.losses
    assert max(v.abs().max() for k, v in a.items() if k.endswith(".lora_up.weight")) > 0  # it trained (B starts at 0)


def test_resume_refuses_another_base_model_or_other_settings(tiny_data, tmp_path):
    from driftless.trainers.loop import train_lora
    from driftless.trainers.state import ResumeState, save_state

    model, _, _, data = tiny_data()
    config = TrainConfig(steps=2, checkpoint_every=2, **FAST)
    train_lora(model, data, config, on_checkpoint=lambda **s: save_state(tmp_path / "s.train-state", **s))
    state = ResumeState(tmp_path / "s.train-state")
    other_model, _, _, _ = tiny_data(seed=1)
    with pytest.raises(ValueError, match="trained on another base model"):
        train_lora(other_model, data, TrainConfig(**{**config.as_dict(), "steps": 4}), resume=state)
    with pytest.raises(ValueError, match=r"learning_rate: 0.002 -> 0.001"):
        train_lora(model, data, TrainConfig(**{**config.as_dict(), "steps": 4, "learning_rate": 1e-3}), resume=state)
    with pytest.raises(ValueError, match="already at step 2"):
        train_lora(model, data, config, resume=state)


def test_bad_input_fails_before_training(tiny_data):
    from driftless.nodes.training_data import split_captions
    from driftless.trainers.data import TrainingData
    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data()
    with pytest.raises(ValueError, match="non-empty"):
        TrainingData(torch.zeros(0, 4, 8, 8), [], data.null)
    with pytest.raises(ValueError, match="3 caption lines for 2 images"):
        split_captions("a\nb\nc", 2)
    assert split_captions("one caption", 3) == ["one caption"] * 3
    with pytest.raises(ValueError, match="rank 999 is larger than layer"):
        train_lora(model, data, TrainConfig(steps=1, rank=999, targets="attention"))
    wrong = TrainingData(torch.zeros(2, 3, 8, 8), data.conditionings, data.null)
    with pytest.raises(ValueError, match="3 channels but this model expects 4"):
        train_lora(model, wrong, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_lora(model, data, TrainConfig(steps=0))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    from driftless.trainers.loop import TrainingDiverged, train_lora
    from driftless.trainers.state import ResumeState, save_state

    model, _, _, data = tiny_data()
    config = TrainConfig(steps=20, checkpoint_every=1, rank=4, alpha=4.0, learning_rate=1e30, max_grad_norm=0.0, optimizer="SGD")
    path = tmp_path / "last.train-state"
    with pytest.raises(TrainingDiverged, match=r"lower the learning rate \(now 1e\+30\)"):
        train_lora(model, data, config, on_checkpoint=lambda **s: save_state(path, **s))
    state = ResumeState(path)  # intact and readable
    assert state.step >= 1 and all(torch.isfinite(torch.tensor(state.losses())))


@pytest.mark.parametrize("architecture", ["sd15-tiny", "flux-dev-tiny"])
def test_interrupt_stops_within_one_step(tiny_data, architecture):
    import comfy.model_management

    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data(architecture)
    calls = []

    def interrupt_at_third_step():
        calls.append(1)
        if len(calls) == 3:
            raise comfy.model_management.InterruptProcessingException()

    steps = []
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train_lora(model, data, TrainConfig(steps=50, **FAST), on_step=lambda s, *_: steps.append(s),
                   check_interrupt=interrupt_at_third_step)
    assert steps == [1, 2]


def test_training_is_reproducible_from_the_seed(tiny_data):
    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data()
    a = train_lora(model, data, TrainConfig(steps=3, seed=5, **FAST))
    b = train_lora(model, data, TrainConfig(steps=3, seed=5, **FAST))
    c = train_lora(model, data, TrainConfig(steps=3, seed=6, **FAST))
    assert a.losses == b.losses and a.losses != c.losses


def test_gradient_checkpointing_changes_memory_not_results(tiny_data):
    """Same LoRA with and without recomputation; and the wrappers are really on the UNet's layers."""
    import torch.utils.checkpoint as checkpoint_module

    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data()
    plain = train_lora(model, data, TrainConfig(steps=3, **FAST))
    calls = []
    original = checkpoint_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    checkpoint_module.checkpoint = counting
    try:
        recomputed = train_lora(model, data, TrainConfig(steps=3, gradient_checkpointing=True, **FAST))
    finally:
        checkpoint_module.checkpoint = original
    assert len(calls) >= 3 * 8  # every res block / transformer / resampler of every step
    a, b = plain.adapter.lora_state_dict(), recomputed.adapter.lora_state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # and the shared model carries no wrapper afterwards
    assert all("forward" not in vars(m) for m in model.model.diffusion_model.modules())


def test_bf16_training_runs_and_keeps_fp32_lora_weights(tiny_data):
    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data()
    result = train_lora(model, data, TrainConfig(steps=3, dtype="bf16", **FAST))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(v.dtype == torch.float32 for v in result.adapter.lora_state_dict().values())


def test_base_fingerprint_ignores_another_clone_left_loaded(tiny_data):
    """ComfyUI clones share one module whose weights carry the last loaded clone's patches (a merged LoRA).
    The base MODEL's fingerprint, and so its resume states, pools and LoRA metadata, must not depend on that."""
    import comfy.model_management
    import comfy.sd

    from driftless.lora.fingerprint import model_fingerprint, patcher_fingerprint
    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data()
    comfy.model_management.load_models_gpu([model])
    clean = model_fingerprint(model.model.diffusion_model)
    lora = train_lora(model, data, TrainConfig(steps=2, **FAST)).adapter.lora_state_dict()
    merged, _ = comfy.sd.load_lora_for_models(model, None, {k: v * 100 for k, v in lora.items()}, 1.0, 0.0)
    comfy.model_management.load_models_gpu([merged])  # as a guider or LoraLoader sampling leaves it
    assert model_fingerprint(model.model.diffusion_model) != clean  # the shared weights carry the merge
    assert patcher_fingerprint(model) == clean
    assert train_lora(model, data, TrainConfig(steps=1, **FAST)).base_fingerprint == clean
    assert patcher_fingerprint(merged) != clean  # a MODEL with a LoRA loaded is another base
