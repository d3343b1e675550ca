"""The one in-between form every format reads into and writes from: per layer, down (A), up (B) and alpha.

Scale convention (ComfyUI-native, kohya, and Hu et al. 2021 eq. 3): ΔW = (alpha / rank) · up · down,
with rank = down.shape[0]; a file without an alpha means alpha = rank (scale 1). Readers of other
conventions (PEFT's use_rslora: lora_alpha / √r) convert their alpha to this one.
"""

import math
import re
from typing import NamedTuple

import torch


class LayerWeights(NamedTuple):
    down: torch.Tensor  # A: [r, in] (linear) or [r, in, kh, kw] (conv)
    up: torch.Tensor  # B: [out, r] (linear) or [out, r, 1, 1] (conv)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def group_keys(tensors: dict, pattern: re.Pattern) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """{layer name: {part: tensor}} for the keys `pattern` matches (groups `name` and `part`), and the rest."""
    grouped, rest = {}, []
    for key, value in tensors.items():
        match = pattern.match(key)
        if match is None:
            rest.append(key)
        else:
            grouped.setdefault(match["name"], {})[match["part"]] = value
    return grouped, rest


def layer_from_parts(name: str, parts: dict, down: str, up: str, alpha: float | None = None) -> LayerWeights:
    """A LayerWeights from a layer's tensors; a half pair or a rank mismatch is an error naming the layer."""
    if down not in parts or up not in parts:
        missing = down if down not in parts else up
        raise ValueError(f"LoRA layer {name} has no {missing} tensor: the file is incomplete")
    a, b = parts[down], parts[up]
    if a.shape[0] != b.shape[1]:
        raise ValueError(f"LoRA layer {name}: down has rank {a.shape[0]} but up has {b.shape[1]}")
    if alpha is None:
        alpha = float(parts["alpha"]) if "alpha" in parts else float(a.shape[0])
    return LayerWeights(a, b, float(alpha))


def read_down_up_alpha(tensors: dict, pattern: re.Pattern) -> dict[str, LayerWeights]:
    """{layer name: weights} for the `.lora_down.weight` / `.lora_up.weight` / `.alpha` parts that ComfyUI's
    native keys and kohya's share (`pattern` names the layer and the part)."""
    grouped, _ = group_keys(tensors, pattern)
    return {name: layer_from_parts(name, parts, "lora_down.weight", "lora_up.weight") for name, parts in grouped.items()}


def down_up_alpha_tensors(stem: str, weights: LayerWeights) -> dict[str, torch.Tensor]:
    """The same three parts of one layer, written under `stem`."""
    return {f"{stem}.lora_down.weight": weights.down, f"{stem}.lora_up.weight": weights.up,
            f"{stem}.alpha": torch.tensor(float(weights.alpha))}


def fits(weights: LayerWeights, shape: tuple[int, ...]) -> bool:
    """Whether the LoRA pair can patch a weight of `shape` ([out, in] or [out, in, kh, kw])."""
    return (weights.up.shape[0] == shape[0] and math.prod(weights.up.shape[2:]) == 1
            and math.prod(weights.down.shape[1:]) == math.prod(shape[1:]))


def shaped_for(weights: LayerWeights, shape: tuple[int, ...]) -> LayerWeights:
    """The pair reshaped to the layer: down [r, *shape[1:]], up [out, r, 1, …] (ComfyUI's and PEFT's layout)."""
    r = weights.rank
    down = weights.down.reshape(r, *shape[1:])
    up = weights.up.reshape(shape[0], r, *([1] * (len(shape) - 2)))
    return LayerWeights(down, up, weights.alpha)


def common_value(values: dict[str, float]):
    """The value most layers share (ties: the smaller), for formats that store one value plus exceptions."""
    counts = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    return min(counts, key=lambda v: (-counts[v], v))
