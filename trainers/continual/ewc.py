"""The elastic weight consolidation penalty (Kirkpatrick et al., PNAS 2017, eq. 3; online form:
Schwarz et al., ICML 2018):

    L(θ) = L_task(θ) + (λ/2)·Σ_i F_i·(θ_i − θ*_i)²

θ are the LoRA parameters (A and B of every layer), θ* the LoRA after the previous concept and F the
accumulated diagonal Fisher from the concept pool. `FlatAnchor` keeps F and θ* as two flat vectors on
the training device, so a step costs one concatenation of the parameters and three element-wise ops.
"""

import torch

from ...lora.adapter import KEY_PREFIX


def ewc_penalty(params: list[torch.Tensor], anchors: list[torch.Tensor], fisher: list[torch.Tensor], weight: float) -> torch.Tensor:
    """(λ/2)·Σ F·(θ − θ*)² over parameter lists of matching shapes."""
    total = sum((f * (p - a).square()).sum() for p, a, f in zip(params, anchors, fisher))
    return 0.5 * weight * total


class FlatAnchor:
    """θ* and F flattened in the order of a parameter list."""

    def __init__(self, anchors: list[torch.Tensor], fisher: list[torch.Tensor], device):
        if len(anchors) != len(fisher) or any(a.shape != f.shape for a, f in zip(anchors, fisher)):
            raise ValueError("the Fisher and the anchor LoRA have different shapes")
        self.anchor = torch.cat([a.detach().float().reshape(-1) for a in anchors]).to(device)
        self.fisher = torch.cat([f.detach().float().reshape(-1) for f in fisher]).to(device)

    def penalty(self, params: list[torch.Tensor], weight: float) -> torch.Tensor:
        flat = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * weight * (self.fisher * (flat - self.anchor).square()).sum()


def parameter_keys(adapter) -> tuple[list[str], list[torch.Tensor]]:
    """The adapter's trainable parameters and their ComfyUI-native keys, in one fixed order."""
    keys, params = [], []
    for name, layer in zip(adapter.names, adapter.layers):
        keys += [f"{KEY_PREFIX}{name}.lora_down.weight", f"{KEY_PREFIX}{name}.lora_up.weight"]
        params += [layer.down, layer.up]
    return keys, params
