"""The TensorBoard log of real training runs: the logged scalars are the trainer's own numbers step by step, a resumed
run's log holds every step once, and the node writes it (validation images included) or says why it cannot."""

import logging

import pytest
import torch

from driftless.trainers.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")

FAST = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.2, targets="attention")


def _read(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [e.step for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


def _f32(values):
    return [torch.tensor(v, dtype=torch.float32).item() for v in values]


def _regularizers():
    from driftless.trainers.regularizers.apt import APT
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchor

    return [APT(bins=4, adaptive_adjustment=True), ParameterAnchor(weight=0.5)]


def test_logged_scalars_are_the_trainers_numbers_step_by_step(tiny_data, tmp_path):
    """6 steps of 2 micro-batches with APT and the parameter anchor, cosine schedule: loss/total is each reported
    loss, its terms add up to it, the learning rate is the schedule's, and APT's γ of every bin is there each step."""
    from driftless.trainers.logs import RunLog
    from driftless.trainers.loop import train_lora
    from driftless.trainers.schedules import lr_factor

    model, _, _, data = tiny_data(n=2)
    config = TrainConfig(steps=6, grad_accumulation=2, schedule="cosine", warmup_steps=2, **FAST)
    log = RunLog(tmp_path, first_step=1)
    regularizers = _regularizers()
    result = train_lora(model, data, config, regularizers, log=log)
    log.close()
    scalars, _ = _read(tmp_path)

    steps = list(range(1, 7))
    assert scalars["loss/total"] == list(zip(steps, _f32(result.losses)))
    for name in ("loss/denoising", "loss/apt", "loss/parameter_anchor"):
        assert [s for s, _ in scalars[name]] == steps
    for i, total in enumerate(result.losses):
        parts = sum(scalars[name][i][1] for name in ("loss/denoising", "loss/apt", "loss/parameter_anchor"))
        assert parts == pytest.approx(total, rel=1e-5)
    assert all(v > 0 for _, v in scalars["loss/parameter_anchor"][1:])  # the LoRA moved after step 1
    lrs = [config.learning_rate * lr_factor(s - 1, 6, "cosine", 2) for s in steps]
    assert scalars["optimizer/lr"] == list(zip(steps, _f32(lrs)))
    gammas = [scalars[f"apt/gamma_{b}"] for b in range(4)]
    assert all([s for s, _ in g] == steps for g in gammas)
    final = regularizers[0].indicator.gamma(torch.arange(4))  # the last logged γ is the indicator's, bin by bin
    assert [g[-1][1] for g in gammas] == _f32(final.tolist())


def test_a_resumed_runs_log_holds_every_step_once(tiny_data, tmp_path):
    """A run logs 6 steps with checkpoints every 3; resuming from step 3 to 8 logs 4-8 again. TensorBoard's reader
    shows steps 1-8 once each, equal to the losses of 8 steps straight (the resume is exact)."""
    from driftless.trainers.logs import RunLog
    from driftless.trainers.loop import train_lora
    from driftless.trainers.state import ResumeState, save_state

    model, _, _, data = tiny_data(n=2)
    config = TrainConfig(steps=8, checkpoint_every=3, **FAST)
    straight = train_lora(model, data, config, _regularizers())

    def checkpoint(**state):
        path = tmp_path / f"step{state['step']}.train-state"
        save_state(path, **state)
        return path

    run = tmp_path / "run"
    log = RunLog(run, first_step=1)
    train_lora(model, data, TrainConfig(**{**config.as_dict(), "steps": 6}), _regularizers(), on_checkpoint=checkpoint,
               log=log)
    log.close()
    state = ResumeState(tmp_path / "step3.train-state")
    log = RunLog(run, first_step=state.step + 1)
    resumed = train_lora(model, data, config, _regularizers(), resume=state, log=log)
    log.close()

    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    scalars, _ = _read(run)
    assert resumed.losses == straight.losses
    assert scalars["loss/total"] == list(zip(range(1, 9), _f32(straight.losses)))
    assert [s for s, _ in scalars["apt/gamma_0"]] == list(range(1, 9))


def _graph(**overrides):
    from comfy_execution.graph_utils import GraphBuilder

    knobs = dict(steps=2, learning_rate=1e-3, rank=4, alpha=4.0, target_layers="attention", batch_size=1,
                 gradient_accumulation=1, optimizer="AdamW", lr_schedule="constant", warmup_steps=0,
                 training_dtype="fp32", gradient_checkpointing=False, seed=0, null_prompt_dropout=0.1,
                 min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0, checkpoint_every=0)
    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture="sd15-tiny", seed=0)
    image = g.node("EmptyImage", id="image", width=64, height=64, batch_size=1, color=0x3366CC)
    data = g.node("DriftlessTrainingData", id="data", clip=model.out(1), captions="a photo of sks vase",
                  images=image.out(0), vae=model.out(2))
    train = g.node("DriftlessTrainLoRA", id="train", model=model.out(0), training_data=data.out(0),
                   **{**knobs, **overrides})
    g.node("SaveImage", id="plot", images=train.out(3), filename_prefix="loss_plot")
    return g.finalize()


def test_the_node_logs_losses_and_validation_images(run_prompt, comfy_host):
    result = run_prompt(_graph(run_name="logged", validation_every=1, validation_steps=2, clip=["model", 1],
                               vae=["model", 2]))
    assert result.success, result.error
    scalars, images = _read(comfy_host.base_directory / "models" / "loras" / "logged")
    assert [s for s, _ in scalars["loss/total"]] == [1, 2]
    assert images == {"validation": [1, 2]}


def test_the_node_trains_without_tensorboard_and_says_so(run_prompt, comfy_host, monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec  # the package as an environment without it sees it (whatever module name loaded the pack)
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "tensorboard" else real(m, *a))
    with caplog.at_level(logging.WARNING):
        result = run_prompt(_graph(run_name="unlogged"))
    assert result.success, result.error
    assert "tensorboard package is not installed (pip install tensorboard)" in caplog.text
    folder = comfy_host.base_directory / "models" / "loras" / "unlogged"
    assert not list(folder.glob("events.out.tfevents.*"))
    off = run_prompt(_graph(run_name="switched_off", tensorboard=False))
    assert off.success, off.error
    assert not list((comfy_host.base_directory / "models" / "loras" / "switched_off").glob("events.out.tfevents.*"))


def test_the_nodes_resumed_log_holds_every_step_once(run_prompt, comfy_host):
    """3 steps with a checkpoint at 2, then 'latest' resumed to 4: the run folder's log shows steps 1-4 once, with the
    losses of 4 steps straight (step 3 of the first attempt, after its last checkpoint, is dropped)."""
    loras = comfy_host.base_directory / "models" / "loras"
    for overrides in ({"steps": 3, "checkpoint_every": 2}, {"steps": 4, "checkpoint_every": 2, "resume_from": "latest"}):
        result = run_prompt(_graph(run_name="logged_resume", **overrides))
        assert result.success, result.error
    straight = run_prompt(_graph(run_name="logged_straight", steps=4))
    assert straight.success, straight.error
    resumed, _ = _read(loras / "logged_resume")
    direct, _ = _read(loras / "logged_straight")
    assert [s for s, _ in resumed["loss/total"]] == [1, 2, 3, 4]
    assert resumed["loss/total"] == direct["loss/total"]
