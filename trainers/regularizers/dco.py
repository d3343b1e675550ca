"""Direct Consistency Optimization (Lee et al., 2024, arXiv 2402.12004, eq. 8; official code kyungmnlee/dco).

    L_DCO = −log σ( −β · ( ‖F* − F_θ(x_t, c)‖² − ‖F* − F_ref(x_t, c)‖² ) )

F_ref is the frozen base model (the LoRA at strength 0, same x_t, σ and prompt), F* the native target
(ε for ε-models). As in the official code, each squared error is the mean over the whole micro-batch
before the log-sigmoid (not a per-sample, DPO-style loss). With min-SNR-γ weighting on, the official code
(customize.py, its `snr_gamma` branch) weights both errors alike: each sample's mean squared error times its
min-SNR weight, then the batch mean; here each error takes the denoising loss's per-sample weight (min-SNR-γ, §1
of docs/papers.md, and APT's 1 − γ where APT is chained too), which is all ones when weighting is off. The loss rewards doing better than the base
model on the subject and saturates once the LoRA is ahead by ~1/β, which keeps it close to the base.

In the paper, L_DCO is the whole training loss (`replace`); `add` keeps the denoising loss beside it.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import Regularizer, StepContext, register
from .knobs import MethodConfig, configured, knob

MODES = {
    "replace": "L_DCO is the training loss (the paper's form)",
    "add": "L_DCO is added to the denoising loss",
}


@dataclass(frozen=True)
class DCOConfig(MethodConfig):
    """Direct Consistency Optimization (Lee et al., 2024, arXiv 2402.12004, eq. 8).

    beta: β of eq. 8, the slope of the log-sigmoid: the loss saturates once the LoRA's error is below the base
        model's by about 1/β. The paper trains with 1000 and reports 1000-2000 working.
    weight: multiplier of L_DCO (1 in the paper, where it is the whole loss).
    mode: "replace", L_DCO is the training loss (the paper); "add", it is added to the denoising loss.
    """

    method: ClassVar[str] = "DCO"

    beta: float = knob(1000.0, "β: how sharply the loss saturates once the LoRA is ahead of the base model. The paper "
                       "uses 1000 (1000-2000 work).", min=1.0, max=1e5, step=10.0)
    weight: float = knob(1.0, "Multiplier of the DCO term.", min=0.0, max=1e4, step=0.1)
    mode: str = knob("replace", "How the term enters the training loss.", options=MODES)


def dco_loss(prediction, frozen_prediction, target, beta: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_DCO of one micro-batch; `weight` [B] weights each sample's squared error in both terms (None: all 1)."""
    model_error = weighted_error(prediction, target, weight)
    reference_error = weighted_error(frozen_prediction, target, weight)
    return -F.logsigmoid(-beta * (model_error - reference_error))


def weighted_error(prediction, target, weight: torch.Tensor | None) -> torch.Tensor:
    """mean_b (w_b · mean of sample b's squared error); unweighted, the mean over the whole batch."""
    if weight is None:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
    per_sample = (prediction.float() - target.float()).square().mean(dim=tuple(range(1, prediction.ndim)))
    return (per_sample * weight.to(per_sample)).mean()


@register
class DCO(Regularizer):
    name = "dco"
    needs_frozen_prediction = True

    def __init__(self, config: DCOConfig | None = None, **overrides):
        """`DCO()` is the node's default; `DCO(beta=250.0)` overrides one setting."""
        self.config = configured(DCOConfig, config, overrides)
        self.beta, self.weight, self.mode = self.config.beta, self.config.weight, self.config.mode
        self.replaces_denoising_loss = self.mode == "replace"

    def settings(self) -> dict:
        return self.config.as_dict()

    def loss(self, ctx: StepContext) -> torch.Tensor:
        return self.weight * dco_loss(ctx.prediction, ctx.frozen_prediction, ctx.target, self.beta, ctx.weight)
