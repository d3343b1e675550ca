"""Training step time and peak memory: Driftless Train LoRA against ComfyUI's TrainLoraNode.

Same model (a bench model: SD1.5-, SDXL-, SD3.5- or Flux-shaped), rank, batch, dtype and layer coverage (every Linear and
Conv2d; TrainLoraNode also trains every bias and norm). Step time is the median interval between
consecutive optimizer steps of a run (first steps skipped), runs alternating ours / stock; peak
memory is measured per trainer in a fresh subprocess (CPU: peak live tensor bytes, from torch.profiler; CUDA:
torch.cuda.max_memory_allocated growth).
"""

import statistics

import torch

from ..common import clock, spread

WARMUP_STEPS = 2


def _setup(architecture: str, seed: int = 0):
    """(MODEL, training data) of a bench model: two random latents captioned 'a photo of sks dog'."""
    model, _, data = setup_with_clip(architecture, seed)
    return model, data


def setup_with_clip(architecture: str, seed: int = 0):
    """(MODEL, CLIP, training data), built once."""
    from ...tinymodels.build import build_tiny_model
    from ...tinymodels.configs import CONFIGS
    from ...trainers.data import TrainingData

    model, clip, vae = build_tiny_model(architecture, seed)
    size = CONFIGS[architecture].default_resolution // 8
    channels = model.model.latent_format.latent_channels
    latents = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of sks dog"))
    null = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return model, clip, TrainingData(latents, [cond, cond], null, ["a photo of sks dog"] * 2)


def run_ours(model, data, steps: int, rank: int, checkpointing: bool) -> list[float]:
    from ...trainers.config import TrainConfig
    from ...trainers.loop import train_lora

    stamps = []
    config = TrainConfig(steps=steps, rank=rank, alpha=rank, targets="all linear+conv", learning_rate=1e-4,
                         gradient_checkpointing=checkpointing, null_prompt_dropout=0.0)
    train_lora(model, data, config, on_step=lambda *a: stamps.append(clock()))
    return stamps


# inputs ComfyUI 0.33's TrainLoraNode added, at its defaults (0.3.75's node has none of them)
STOCK_LATER_INPUTS = {"quantized_backward": [False], "checkpoint_depth": [1], "offloading": [False],
                      "bucket_mode": [False], "bypass_mode": [False]}


def run_stock(model, data, steps: int, rank: int, checkpointing: bool) -> list[float]:
    import inspect

    import comfy.utils
    from comfy_extras.nodes_train import TrainLoraNode

    accepted = inspect.signature(TrainLoraNode.execute).parameters
    later = {k: v for k, v in STOCK_LATER_INPUTS.items() if k in accepted}
    stamps = []
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: stamps.append(clock()))
    try:
        TrainLoraNode.execute(
            model=[model], latents=[{"samples": data.latents[:1]}, {"samples": data.latents[1:]}],
            positive=[data.conditionings[0], data.conditionings[1]], batch_size=[1], grad_accumulation_steps=[1],
            steps=[steps], learning_rate=[1e-4], rank=[rank], optimizer=["AdamW"], loss_function=["MSE"], seed=[0],
            training_dtype=["fp32"], lora_dtype=["fp32"], algorithm=["LoRA"], gradient_checkpointing=[checkpointing],
            existing_lora=["[None]"], **later,
        )
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return stamps


def step_time(stamps: list[float]) -> float:
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP_STEPS - 1 :]
    return statistics.median(intervals)


def paired_step_times(architecture, repeats, steps, rank, checkpointing, stock_checkpointing=None) -> dict:
    """Ours and TrainLoraNode alternating, `repeats` times, both with gradient checkpointing `checkpointing` (or the
    stock node with `stock_checkpointing` where given: each node at its own default). Where the stock node cannot
    train the model at all (0.33's crashes in backward on Flux without gradient checkpointing: Flux blocks add into
    their normalised input in place), its error is reported instead of its times."""
    stock_checkpointing = checkpointing if stock_checkpointing is None else stock_checkpointing
    model, data = _setup(architecture)
    ours, stock, ratios = [], [], []
    for _ in range(repeats):
        a = step_time(run_ours(model, data, steps, rank, checkpointing))
        ours.append(a)
        try:
            b = step_time(run_stock(model, data, steps, rank, stock_checkpointing))
        except RuntimeError as e:
            return {"ours_s": spread(ours), "stock_error": str(e).split(":")[0].split("\n")[0][:120]}
        stock.append(b)
        ratios.append(a / b)
    return {"ours_s": spread(ours), "stock_s": spread(stock), "ratio": spread(ratios)}


def rotated_step_ratios(runs: dict, rounds: int) -> dict:
    """Advance every TrainingRun one optimizer step at a time, in an order rotated every round, so machine drift
    hits all alike; after WARMUP_STEPS rounds, each step is timed. Returns per run its step time (median,
    min–max) and, for all but the first run (the reference), the per-round ratio to the reference's step."""
    names = list(runs)
    times = {n: [] for n in names}
    for r in range(WARMUP_STEPS + rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            runs[n].activate()
            start = clock()
            runs[n].step()
            if r >= WARMUP_STEPS:
                times[n].append(clock() - start)
    ratios = {n: [a / b for a, b in zip(times[n], times[names[0]])] for n in names[1:]}
    return {n: {"s_per_step": spread(times[n]), **({"ratio": spread(ratios[n])} if n in ratios else {})} for n in names}
