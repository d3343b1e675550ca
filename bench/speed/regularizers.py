"""Training step time with each drift regularizer, as a ratio of the plain-LoRA step (same run, interleaved)."""

import torch

from . import training


def make_regularizers(name: str, clip, data):
    """The regularizers of one benchmark method (prior preservation's class latents sized like `data`'s)."""
    from ...trainers.regularizers.apt import APT
    from ...trainers.regularizers.dco import DCO
    from ...trainers.regularizers.parameter_anchor import ParameterAnchor
    from ...trainers.regularizers.prior_preservation import PriorPreservation

    if name == "plain":
        return []
    if name == FLOOR:
        return [frozen_forward_only()]
    if name == "parameter anchor":  # each method at its node defaults
        return [ParameterAnchor()]
    if name == "DCO":
        return [DCO()]
    if name == "APT":
        return [APT()]
    if name in APT_PARTS:
        return [APT(**APT_PARTS[name])]
    if name == "prior preservation":
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog"))
        channels, size = data.latents.shape[1], data.latents.shape[-1]
        latents = torch.randn(4, channels, size, size, generator=torch.Generator().manual_seed(1))
        return [PriorPreservation(latents, cond, "a photo of a dog")]
    raise ValueError(name)


FLOOR = "frozen forward only"
NAMES = ("plain", FLOOR, "parameter anchor", "DCO", "APT", "prior preservation")
# APT with one part on (each pays the frozen forward), beside DCO, which pays only that forward
APT_PARTS = {
    "APT, adaptive adjustment alone": dict(representation_weight=0.0, attention_weight=0.0),
    "APT, representation stabilization alone": dict(adaptive_adjustment=False, attention_weight=0.0),
    "APT, attention alignment alone": dict(adaptive_adjustment=False, representation_weight=0.0),
}
APT_PART_NAMES = ("plain", FLOOR, "DCO", "APT", *APT_PARTS)


def frozen_forward_only():
    """A regularizer that adds nothing but the step's frozen forward: the floor of DCO's and APT's cost."""
    from ...trainers.regularizers import Regularizer

    class FrozenForwardOnly(Regularizer):
        name = "frozen forward only"
        needs_frozen_prediction = True

        def loss(self, ctx):  # the trainer ran the frozen forward because needs_frozen_prediction is set
            return ctx.denoising_loss.new_zeros(())

    return FrozenForwardOnly()


def config(rank: int, dtype: str = "fp32", steps: int = 10**6):
    """The benchmark's training settings: LoRA rank `rank` on attention, no null-prompt dropout."""
    from ...trainers.config import TrainConfig

    return TrainConfig(steps=steps, rank=rank, alpha=rank, targets="attention", null_prompt_dropout=0.0, dtype=dtype)


def training_run(model, clip, data, name, rank, dtype="fp32"):
    """A TrainingRun of one method, advanced step by step by the caller."""
    from ...trainers.loop import TrainingRun

    return TrainingRun(model, data, config(rank, dtype), make_regularizers(name, clip, data))


def run(model, clip, data, name, steps, rank, dtype="fp32"):
    """A whole run (for the peak-memory probe)."""
    from ...trainers.loop import train_lora

    train_lora(model, data, config(rank, dtype, steps), make_regularizers(name, clip, data))


def paired_ratios(architecture, repeats, steps, rank, dtype="fp32", names=NAMES) -> dict:
    """Every method advanced one optimizer step at a time in rotating order, so drift hits all alike.

    Each method's step time is the median over its timed steps; the ratio is taken per round of
    steps (one step of every method) against plain LoRA, and reported as median and min–max.
    """
    model, clip, data = training.setup_with_clip(architecture)
    runs = {n: training_run(model, clip, data, n, rank, dtype) for n in names}
    return training.rotated_step_ratios(runs, repeats * steps)
