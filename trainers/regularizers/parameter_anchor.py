"""Parameter anchor (Preserve & Personalize, Kim et al., ICLR 2026, Alg. 1 line 9 and Remark 3).

    L_anchor = λ · Σ_layers ‖ΔW‖²_F,   ΔW = (α/r) · B · A

Theorem 2 of the paper bounds the KL between the personalized and the base model by λ·‖θ − θ_base‖^k;
with a LoRA, θ − θ_base is exactly ΔW, so the penalty needs no frozen forward and no class images.
‖B·A‖²_F is computed as Σ (BᵀB) ⊙ (A·Aᵀ) over r×r matrices, never materializing the out×in ΔW.

The term depends on the LoRA weights alone, so its gradient is added in closed form once per optimizer step
(`add_parameter_gradients`), with batched products per group of same-shaped layers and one multi-tensor add:
through autograd, every LoRA factor would receive a second gradient to accumulate, one small kernel each,
which on a GPU costs more than the term's arithmetic.

`form="code"`: the official LoRA scripts penalize the factors instead, λ·Σ (‖A‖² + ‖B‖²) (plain weight
decay on A and B; their λ is 1e-7 for SD1.5, 1e-6 for SDXL). Use it to reproduce the paper's numbers.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import Regularizer, StepContext, register
from .knobs import MethodConfig, configured, knob

FORMS = {
    "paper": "λ·Σ‖(α/r)·B·A‖² — the penalty on the weight change itself (the paper's formula)",
    "code": "λ·Σ(‖A‖² + ‖B‖²) — the official LoRA scripts' penalty on the factors",
}


@dataclass(frozen=True)
class ParameterAnchorConfig(MethodConfig):
    """Parameter anchor (Preserve & Personalize, Kim et al., ICLR 2026, Alg. 1 line 9 and Remark 3).

    weight: λ, the penalty's multiplier: larger, less drift and a weaker subject. 0.01 is a starting point for the
        paper form; for the code form the official scripts use 1e-7 (SD1.5) and 1e-6 (SDXL).
    form: "paper", λ·Σ‖ΔW‖² with ΔW = (α/r)·B·A (Theorem 2's bound on the KL to the base model); "code", λ·Σ(‖A‖² +
        ‖B‖²), weight decay on the factors as the official LoRA scripts do.
    """

    method: ClassVar[str] = "parameter anchor"

    weight: float = knob(0.01, "λ. Paper form: start near 0.01 and raise it until drift falls while the subject still "
                         "appears. Code form: the official scripts use 1e-7 (SD1.5) and 1e-6 (SDXL).",
                         min=0.0, max=1e6, step=1e-4)
    form: str = knob("paper", "Which penalty.", options=FORMS)


def delta_norm_squared(down: torch.Tensor, up: torch.Tensor, scale) -> torch.Tensor:
    """‖scale · up @ down‖²_F for LoRA factors of any layer kind (conv factors are flattened)."""
    a, b = down.flatten(1), up.flatten(1)  # [r, in·k·k], [out, r]
    return scale**2 * ((b.T @ b) * (a @ a.T)).sum()


@register
class ParameterAnchor(Regularizer):
    name = "parameter_anchor"

    def __init__(self, config: ParameterAnchorConfig | None = None, **overrides):
        """`ParameterAnchor()` is the node's default; `ParameterAnchor(weight=0.1)` overrides one setting."""
        self.config = configured(ParameterAnchorConfig, config, overrides)
        self.weight, self.form = self.config.weight, self.config.form

    def settings(self) -> dict:
        return self.config.as_dict()

    def loss(self, ctx: StepContext) -> torch.Tensor:
        """The term's value, without a graph: its gradient is added by `add_parameter_gradients`."""
        return self.value(ctx.adapter)

    def value(self, adapter) -> torch.Tensor:
        """λ·Σ‖ΔW‖² (paper) or λ·Σ(‖A‖² + ‖B‖²) (code), summed over layers grouped by factor shapes and α/r:
        a few batched products instead of one per layer."""
        total = 0.0
        with torch.no_grad(), _full_precision(adapter):
            for scale, downs, ups in _stacked(adapter):
                if self.form == "paper":
                    gram_down, gram_up = downs @ downs.transpose(1, 2), ups.transpose(1, 2) @ ups  # [G, r, r]
                    total = total + scale**2 * (gram_up * gram_down).sum()
                else:
                    total = total + downs.square().sum() + ups.square().sum()
        return self.weight * total if isinstance(total, torch.Tensor) else torch.zeros(())

    def add_parameter_gradients(self, adapter, scale: float = 1.0) -> None:
        """Add scale × ∂/∂(A, B) of the term to the factors' gradients, in closed form (Σ over layers, s = α/r):

            paper: ∂/∂B = 2λs²·B·(A·Aᵀ),  ∂/∂A = 2λs²·(Bᵀ·B)·A          code: ∂/∂A = 2λ·A,  ∂/∂B = 2λ·B
        """
        if self.weight == 0:
            return
        with torch.no_grad(), _full_precision(adapter):
            if self.form == "code":
                params = list(adapter.parameters())
                torch._foreach_add_(_grads(params), params, alpha=2 * self.weight * scale)
                return
            for s, downs, ups, layers in _stacked(adapter, with_layers=True):
                grad_down = (ups.transpose(1, 2) @ ups) @ downs  # [G, r, in]
                grad_up = ups @ (downs @ downs.transpose(1, 2))  # [G, out, r]
                alpha = 2 * self.weight * s**2 * scale
                downs_grads = _grads([layer.down for layer in layers])
                ups_grads = _grads([layer.up for layer in layers])
                torch._foreach_add_(downs_grads, [g.view_as(p) for g, p in zip(grad_down.unbind(0), downs_grads)], alpha=alpha)
                torch._foreach_add_(ups_grads, [g.view_as(p) for g, p in zip(grad_up.unbind(0), ups_grads)], alpha=alpha)


def _grads(params: list) -> list[torch.Tensor]:
    """The parameters' gradient tensors, made (zeros) where the backward left none."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]


def _full_precision(adapter):
    """The factors are fp32; keep the products there when the step runs under autocast."""
    first = next(iter(adapter.parameters()), None)
    return torch.autocast(first.device.type if first is not None else "cpu", enabled=False)


def _stacked(adapter, with_layers: bool = False):
    """Per group of layers: α/r, the stacked A [G, r, in·k·k] and B [G, out, r] (and the layers)."""
    for scale, layers in _groups(adapter):
        downs = torch.stack([layer.down.flatten(1) for layer in layers])
        ups = torch.stack([layer.up.flatten(1) for layer in layers])
        yield (scale, downs, ups, layers) if with_layers else (scale, downs, ups)


def _groups(adapter) -> list[tuple[float, list]]:
    """The adapter's layers grouped by (A shape, B shape, α/r), computed again only when an α/r changes."""
    scales = tuple(layer.scale_value() for layer in adapter.layers)
    cached = getattr(adapter, "_anchor_groups", None)
    if cached is None or cached[0] != scales:
        by_key = defaultdict(list)
        for layer, scale in zip(adapter.layers, scales):
            by_key[(tuple(layer.down.flatten(1).shape), tuple(layer.up.flatten(1).shape), scale)].append(layer)
        cached = adapter._anchor_groups = (scales, [(key[2], layers) for key, layers in by_key.items()])
    return cached[1]
