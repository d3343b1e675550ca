"""The DreamBench similarity formulas on embeddings (Ruiz et al., DreamBooth, CVPR 2023, §4.1).

All scores are raw cosine similarities in [−1, 1]: cos(u, v) = u·v / (‖u‖ ‖v‖).

- DINO   = (1 / (N·M)) Σ_i Σ_j cos(d(g_i), d(r_j))   DINO CLS embeddings d of N generated images g and M
                                                     real (reference) images r: the mean pairwise cosine.
- CLIP-I = the same with CLIP image embeddings.
- CLIP-T = (1 / N) Σ_i cos(c_img(g_i), c_txt(p_i))    each image against its own prompt p_i (identifier
                                                     removed or replaced by the class noun).
- drift similarity = (1 / N) Σ_i cos(e(b_i), e(p_i))  base-model sample b_i and personalized-model sample p_i
                                                     drawn at the same seed and prompt (higher = less drift).

torchmetrics' CLIPScore reports 100·max(cos, 0) instead: multiply by 100 and clip at 0 to compare.
"""

import math

import torch


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D] × [M, D] -> [N, M] cosine similarities, computed in float32 (float64 stays float64)."""
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a = torch.nn.functional.normalize(a.to(dtype), dim=-1)
    b = torch.nn.functional.normalize(b.to(dtype), dim=-1)
    return a @ b.T


def pairwise_similarity(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per generated image, its mean cosine to every reference image: [N]. Their mean is the DINO / CLIP-I score
    (every row averages the same M pairs, so the mean of rows is the mean over all N·M pairs)."""
    if generated.shape[0] == 0 or reference.shape[0] == 0:
        raise ValueError("pairwise similarity needs at least one generated and one reference embedding")
    return cosine_matrix(generated, reference).mean(dim=1)


def rowwise_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_i) for aligned rows: [N]. CLIP-T (image i vs its prompt) and the drift pairs."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"row-wise similarity needs aligned rows, got {a.shape[0]} and {b.shape[0]}")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return torch.nn.functional.cosine_similarity(a.to(dtype), b.to(dtype), dim=-1, eps=1e-12)


def summary(values: torch.Tensor | list[float]) -> dict:
    """mean, std (sample std, n − 1 in the denominator; 0 for a single value), min, max and n of per-image values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    std = v.std(unbiased=True).item() if v.numel() > 1 else 0.0
    return {"mean": v.mean().item(), "std": std, "min": v.min().item(), "max": v.max().item(), "n": v.numel()}


def torchmetrics_scale(cosine: float | torch.Tensor):
    """What torchmetrics' CLIPScore would report for this cosine: 100 · max(cos, 0)."""
    if isinstance(cosine, torch.Tensor):
        return 100.0 * cosine.clamp(min=0)
    return 100.0 * max(cosine, 0.0)
