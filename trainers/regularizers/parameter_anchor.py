"""Parameter anchor (Preserve & Personalize, Kim et al., ICLR 2026, Alg. 1 line 9 and Remark 3).

    L_anchor = λ · Σ_layers ‖ΔW‖²_F,   ΔW = (α/r) · B · A

Theorem 2 of the paper bounds the KL between the personalized and the base model by λ·‖θ − θ_base‖^k;
with a LoRA, θ − θ_base is exactly ΔW, so the penalty needs no frozen forward and no class images.
‖B·A‖²_F is computed as Σ (BᵀB) ⊙ (A·Aᵀ) over r×r matrices, never materializing the out×in ΔW.

`form="code"`: the official LoRA scripts penalize the factors instead, λ·Σ (‖A‖² + ‖B‖²) (plain weight
decay on A and B; their λ is 1e-7 for SD1.5, 1e-6 for SDXL). Use it to reproduce the paper's numbers.
"""

from collections import defaultdict

import torch

from . import Regularizer, StepContext, register

FORMS = {
    "paper": "λ·Σ‖(α/r)·B·A‖² — the penalty on the weight change itself (the paper's formula)",
    "code": "λ·Σ(‖A‖² + ‖B‖²) — the official LoRA scripts' penalty on the factors",
}


def delta_norm_squared(down: torch.Tensor, up: torch.Tensor, scale) -> torch.Tensor:
    """‖scale · up @ down‖²_F for LoRA factors of any layer kind (conv factors are flattened)."""
    a, b = down.flatten(1), up.flatten(1)  # [r, in·k·k], [out, r]
    return scale**2 * ((b.T @ b) * (a @ a.T)).sum()


@register
class ParameterAnchor(Regularizer):
    name = "parameter_anchor"

    def __init__(self, weight: float = 1.0, form: str = "paper"):
        if form not in FORMS:
            raise ValueError(f"parameter anchor form must be one of {list(FORMS)}, got {form!r}")
        if weight < 0:
            raise ValueError(f"parameter anchor weight must be >= 0, got {weight}")
        self.weight, self.form = float(weight), form

    def settings(self) -> dict:
        return {"weight": self.weight, "form": self.form}

    def loss(self, ctx: StepContext) -> torch.Tensor:
        """Summed over layers grouped by factor shapes: a few batched products instead of one per layer."""
        total = ctx.x0.new_zeros(())
        for layers in _groups(ctx.adapter):
            downs = torch.stack([layer.down.flatten(1) for layer in layers])  # [G, r, in]
            ups = torch.stack([layer.up.flatten(1) for layer in layers])  # [G, out, r]
            if self.form == "paper":
                scales = torch.stack([layer.scale for layer in layers]).to(total.device)
                per_layer = ((ups.transpose(1, 2) @ ups) * (downs @ downs.transpose(1, 2))).sum(dim=(1, 2))
                total = total + (scales**2 * per_layer).sum()
            else:
                total = total + downs.square().sum() + ups.square().sum()
        return self.weight * total


def _groups(adapter) -> list[list]:
    """The adapter's layers grouped by (A shape, B shape), computed once per adapter."""
    cached = getattr(adapter, "_anchor_groups", None)
    if cached is None:
        by_shape = defaultdict(list)
        for layer in adapter.layers:
            by_shape[(tuple(layer.down.flatten(1).shape), tuple(layer.up.flatten(1).shape))].append(layer)
        cached = list(by_shape.values())
        adapter._anchor_groups = cached
    return cached
