"""Training step time with each drift regularizer, as a ratio of the plain-LoRA step (same run, interleaved)."""

import torch

from ..common import spread
from . import training


def make_regularizers(name: str, clip):
    from ...trainers.regularizers.apt import APT
    from ...trainers.regularizers.dco import DCO
    from ...trainers.regularizers.parameter_anchor import ParameterAnchor
    from ...trainers.regularizers.prior_preservation import PriorPreservation

    if name == "plain":
        return []
    if name == "parameter anchor":
        return [ParameterAnchor(0.01)]
    if name == "DCO":
        return [DCO(mode="add")]
    if name == "APT":
        return [APT()]
    if name == "prior preservation":
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog"))
        latents = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(1))
        return [PriorPreservation(latents, cond, "a photo of a dog")]
    raise ValueError(name)


NAMES = ("plain", "parameter anchor", "DCO", "APT", "prior preservation")


def run(model, clip, data, name, steps, rank):
    import time

    from ...trainers.config import TrainConfig
    from ...trainers.loop import train_lora

    stamps = []
    config = TrainConfig(steps=steps, rank=rank, alpha=rank, targets="attention", null_prompt_dropout=0.0)
    train_lora(model, data, config, make_regularizers(name, clip), on_step=lambda *a: stamps.append(time.perf_counter()))
    return training.step_time(stamps)


def paired_ratios(architecture, repeats, steps, rank) -> dict:
    from ...tinymodels.build import build_tiny_model

    model, data = training._setup(architecture)
    _, clip, _ = build_tiny_model(architecture, 0)
    times = {n: [] for n in NAMES}
    ratios = {n: [] for n in NAMES[1:]}
    for repeat in range(repeats):
        order = NAMES[repeat % len(NAMES):] + NAMES[: repeat % len(NAMES)]  # rotate: no method always runs first
        this = {n: run(model, clip, data, n, steps, rank) for n in order}
        for n in NAMES:
            times[n].append(this[n])
        for n in NAMES[1:]:
            ratios[n].append(this[n] / this["plain"])
    return {n: {"s_per_step": spread(times[n]), **({"ratio": spread(ratios[n])} if n in ratios else {})} for n in NAMES}
