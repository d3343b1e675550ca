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


def swap_halves(rows: torch.Tensor) -> torch.Tensor:
    """The rows with their two halves exchanged (ComfyUI's (shift, scale) <-> diffusers' (scale, shift)); its own
    inverse."""
    first, second = rows.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


class RowBlock(NamedTuple):
    """A LoRA layer that patches a block of output rows of a larger layer (one of fused q/k/v, say)."""

    start: int
    rows: int
    swapped: bool  # its rows are the block's rows with the two halves exchanged
    weights: LayerWeights


def split_rows(weights: LayerWeights, blocks: list[tuple[int, int, bool]], fold_scale: bool = False) -> list[LayerWeights]:
    """One LoRA per (start, rows, swapped) block of the layer's output rows: the same down (A) for each, up (B)
    cut into those rows. Exact: the blocks' ΔW are the rows of the layer's ΔW. With `fold_scale` the scale
    alpha/rank moves into up and alpha becomes the rank (scale 1), for readers that ignore alpha."""
    scale = weights.alpha / weights.rank
    out = []
    for start, rows, swapped in blocks:
        up = weights.up.flatten(1)[start:start + rows]
        if swapped:
            up = swap_halves(up)
        alpha = weights.alpha
        if fold_scale and scale != 1.0:
            up, alpha = up * scale, float(weights.rank)
        out.append(LayerWeights(weights.down.clone(), up.clone().reshape(rows, *weights.up.shape[1:]), alpha))
    return out


def join_rows(blocks: list[RowBlock], out_rows: int) -> LayerWeights:
    """The one LoRA of a layer whose output rows other LoRA layers patch block by block (the inverse of
    `split_rows`): ΔW = the blocks' ΔW stacked in their rows, zero where no block is.

    Where every row is covered, in order, by blocks that share one down (A) and one alpha, as `split_rows`
    writes them, the result is exact and keeps the rank: A, the ups stacked, alpha. Otherwise the ranks
    concatenate: A = the downs stacked ([Σr, in]), B block-diagonal in the blocks' rows ([out, Σr]), each block's
    scale kept (one alpha for all when the scales agree, else folded into B with alpha = Σr).
    """
    blocks = sorted(blocks, key=lambda b: b.start)
    ups = [swap_halves(b.weights.up.flatten(1)) if b.swapped else b.weights.up.flatten(1) for b in blocks]
    first = blocks[0].weights
    tiled = [b.start for b in blocks] == [0, *(b.start + b.rows for b in blocks[:-1])] and \
        blocks[-1].start + blocks[-1].rows == out_rows
    shared = all(b.weights.alpha == first.alpha and b.weights.down.shape == first.down.shape
                 and torch.equal(b.weights.down, first.down) for b in blocks)
    if tiled and shared:
        return LayerWeights(first.down, torch.cat(ups, dim=0), first.alpha)
    total = sum(b.weights.rank for b in blocks)
    scales = [b.weights.alpha / b.weights.rank for b in blocks]
    same_scale = all(s == scales[0] for s in scales)
    down = torch.cat([b.weights.down.flatten(1) for b in blocks], dim=0)
    up = torch.zeros(out_rows, total, dtype=ups[0].dtype, device=ups[0].device)
    column = 0
    for block, b, s in zip(blocks, ups, scales):
        r = block.weights.rank
        up[block.start:block.start + block.rows, column:column + r] = b if same_scale else b * s
        column += r
    alpha = scales[0] * total if same_scale else float(total)
    return LayerWeights(down.reshape(total, *first.down.shape[1:]), up, float(alpha))
