"""Direct Consistency Optimization (Lee et al., 2024, arXiv 2402.12004, eq. 8; official code kyungmnlee/dco).

    L_DCO = −log σ( −β · ( ‖F* − F_θ(x_t, c)‖² − ‖F* − F_ref(x_t, c)‖² ) )

F_ref is the frozen base model (the LoRA at strength 0, same x_t, σ and prompt), F* the native target
(ε for ε-models). As in the official code, each squared error is the mean over the whole micro-batch
before the log-sigmoid (not a per-sample, DPO-style loss). The loss rewards doing better than the base
model on the subject and saturates once the LoRA is ahead by ~1/β, which keeps it close to the base.

In the paper, L_DCO is the whole training loss (`replace`); `add` keeps the denoising loss beside it.
"""

import torch
import torch.nn.functional as F

from . import Regularizer, StepContext, register

MODES = {
    "replace": "L_DCO is the training loss (the paper's form)",
    "add": "L_DCO is added to the denoising loss",
}


def dco_loss(prediction, frozen_prediction, target, beta: float) -> torch.Tensor:
    model_error = F.mse_loss(prediction.float(), target.float(), reduction="mean")
    reference_error = F.mse_loss(frozen_prediction.float(), target.float(), reduction="mean")
    return -F.logsigmoid(-beta * (model_error - reference_error))


@register
class DCO(Regularizer):
    name = "dco"
    needs_frozen_prediction = True

    def __init__(self, beta: float = 1000.0, weight: float = 1.0, mode: str = "replace"):
        if mode not in MODES:
            raise ValueError(f"DCO mode must be one of {list(MODES)}, got {mode!r}")
        if beta <= 0 or weight < 0:
            raise ValueError(f"DCO needs beta > 0 and weight >= 0 (got beta {beta}, weight {weight})")
        self.beta, self.weight, self.mode = float(beta), float(weight), mode
        self.replaces_denoising_loss = mode == "replace"

    def settings(self) -> dict:
        return {"beta": self.beta, "weight": self.weight, "mode": self.mode}

    def loss(self, ctx: StepContext) -> torch.Tensor:
        return self.weight * dco_loss(ctx.prediction, ctx.frozen_prediction, ctx.target, self.beta)
