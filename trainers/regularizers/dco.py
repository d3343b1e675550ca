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
from .knobs import Knob, check_knobs

MODES = {
    "replace": "L_DCO is the training loss (the paper's form)",
    "add": "L_DCO is added to the denoising loss",
}
KNOBS = {
    "beta": Knob(1000.0, "β: how sharply the loss saturates once the LoRA is ahead of the base model. The paper uses "
                 "1000 (1000-2000 work).", min=1.0, max=1e5, step=10.0),
    "weight": Knob(1.0, "Multiplier of the DCO term.", min=0.0, max=1e4, step=0.1),
    "mode": Knob("replace", "How the term enters the training loss.", options=MODES),
}


def dco_loss(prediction, frozen_prediction, target, beta: float) -> torch.Tensor:
    model_error = F.mse_loss(prediction.float(), target.float(), reduction="mean")
    reference_error = F.mse_loss(frozen_prediction.float(), target.float(), reduction="mean")
    return -F.logsigmoid(-beta * (model_error - reference_error))


@register
class DCO(Regularizer):
    name = "dco"
    needs_frozen_prediction = True

    def __init__(self, beta: float = KNOBS["beta"].default, weight: float = KNOBS["weight"].default,
                 mode: str = KNOBS["mode"].default):
        checked = check_knobs(KNOBS, "DCO", beta=beta, weight=weight, mode=mode)
        self.beta, self.weight, self.mode = checked["beta"], checked["weight"], checked["mode"]
        self.replaces_denoising_loss = mode == "replace"

    def settings(self) -> dict:
        return {"beta": self.beta, "weight": self.weight, "mode": self.mode}

    def loss(self, ctx: StepContext) -> torch.Tensor:
        return self.weight * dco_loss(ctx.prediction, ctx.frozen_prediction, ctx.target, self.beta)
