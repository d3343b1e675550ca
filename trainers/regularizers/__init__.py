"""Drift regularizers: each adds a term to the training loss, written against `StepContext`.

A regularizer is a small object with a `name`, its `settings()` (recorded in the LoRA file), whether it
needs the frozen base model's prediction, and `loss(ctx) -> scalar tensor`. Several can be chained;
their terms add. The frozen prediction is computed at most once per step, on the same loaded weights
with the LoRA at strength 0 (a bit-exact base-model forward), and shared by all of them.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class StepContext:
    """One micro-batch as the trainer saw it, in the model's native parameterization."""

    x0: torch.Tensor  # model-space latents (after process_latent_in)
    noise: torch.Tensor
    sigma: torch.Tensor
    x_t: torch.Tensor
    prediction: torch.Tensor  # the LoRA model's raw output F
    target: torch.Tensor  # F* (ε for ε-models)
    weight: torch.Tensor  # per-sample loss weight (min-SNR), [B]
    adapter: object  # the LoraAdapter being trained
    step: int
    _frozen: Callable[[], torch.Tensor] | None = None
    _frozen_value: torch.Tensor | None = field(default=None, repr=False)

    @property
    def frozen_prediction(self) -> torch.Tensor:
        """The base model's raw output on the same x_t, σ and text (no grad); computed once."""
        if self._frozen_value is None:
            if self._frozen is None:
                raise RuntimeError("no frozen-model forward available in this context")
            self._frozen_value = self._frozen()
        return self._frozen_value


class Regularizer(ABC):
    name = "base"
    needs_frozen_prediction = False

    def settings(self) -> dict:
        return {}

    @abstractmethod
    def loss(self, ctx: StepContext) -> torch.Tensor:
        """A scalar added to the step's loss."""
