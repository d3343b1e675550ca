"""The diagonal Fisher of the LoRA parameters and its online accumulation (EWC).

    F_i = E_x[ (∂/∂θ_i log p_θ(y | x))² ]                               (Kirkpatrick et al., PNAS 2017, eq. 3)

estimated as the mean of squared per-draw gradients over N draws. Two sources of log p:
- **EWC-DC** (Jha et al., ICLR 2025, §3.2): log p_θ(c_n | x) from diffusion-classifier scores, the
  cross-entropy of the true concept against the pretrained concept and sampled past concepts;
- **LoRA-EWC** (their baseline): the plain denoising loss −‖F* − F_θ(x_t, c_n)‖² (a Gaussian
  log-likelihood up to scale).

Online EWC (Schwarz et al., ICML 2018, §3.1): F⁽ⁿ⁾ = γ·F⁽ⁿ⁻¹⁾ + F_new. Each new Fisher is scaled to sum 1
before it is folded in, so the penalty weight λ means the same whatever the loss scale, the DC
temperature or the number of LoRA parameters (the paper gives no scale; a choice, docs/papers.md §5).
"""

from typing import Callable, Iterable

import torch


def diagonal_fisher(params: list[torch.Tensor], losses: Iterable[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
    """(1/N)·Σ_n (∂ℓ_n/∂θ)² for each parameter; each ℓ_n is one draw's loss (one example: a per-sample gradient)."""
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    n = 0
    for loss in losses:
        grads = torch.autograd.grad(loss(), params, allow_unused=True)
        for total, grad in zip(sums, grads):
            if grad is not None:
                total.add_(grad.detach().float().square())
        n += 1
    if n == 0:
        raise ValueError("the Fisher needs at least one draw")
    return [s / n for s in sums]


def unit_sum(fisher: list[torch.Tensor]) -> list[torch.Tensor]:
    """F / ΣF (unchanged if it is all zeros)."""
    total = sum(f.double().sum() for f in fisher)
    if not total > 0:
        return [f.clone() for f in fisher]
    return [(f.double() / total).float() for f in fisher]


def fold(previous: list[torch.Tensor] | None, new: list[torch.Tensor], decay: float) -> list[torch.Tensor]:
    """Online EWC: γ·F_previous + F_new."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"the Fisher decay gamma must be in [0, 1], got {decay}")
    if previous is None:
        return [f.clone() for f in new]
    return [decay * p.to(n.device) + n for p, n in zip(previous, new)]
