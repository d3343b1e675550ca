"""The denoising objective in the model's native parameterization, read off ComfyUI's model_sampling.

Every ComfyUI model family noises and denoises affinely (comfy/model_sampling.py):
    x_t = a(σ)·x0 + b(σ)·ε                  (noise_scaling: a=1, b=σ for ε/v models; a=1−σ, b=σ for flow)
    x̂0  = c(σ)·x_t + d(σ)·F(x_t)            (calculate_denoised, F = the network's raw output)
The native target is the output that denoises exactly, F* = (x0 − c·x_t)/d, which is ε for ε-models
(Ho et al. 2020, eq. 14), v = α_t·ε − σ_t·x0 for v-models (Salimans & Ho 2022, §4), and ε − x0 for
rectified flow (Liu et al. 2022). The loss ‖F − F*‖² = ‖x0 − x̂0‖²/d² is computed from apply_model's
x̂0, so every model type, wrapper and patch ComfyUI applies at sampling time applies in training too.

Min-SNR-γ (Hang et al. 2023, eq. 9) weights the x0-space error by min(SNR, γ), SNR = a²/b²; in native
units that is min(SNR, γ)·d² (ε-models: min(SNR, γ)/SNR; v-models: min(SNR, γ)/(SNR + 1)).

Pure torch: `model_sampling` is duck-typed (noise_scaling, calculate_denoised, and sigmas or
percent_to_sigma).
"""

from dataclasses import dataclass

import torch


def _per_sample(sigma: torch.Tensor, fn) -> torch.Tensor:
    """Evaluate an affine map of ComfyUI's at one point per sample, in sigma's dtype; returns shape [B]."""
    ones = torch.ones(sigma.shape[0], 1, 1, 1, dtype=sigma.dtype, device=sigma.device)
    return fn(ones).reshape(-1)


def _maps(model_sampling, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """a, b, c, d of the module docstring at `sigma`, in sigma's dtype."""
    zeros = lambda o: torch.zeros_like(o)  # noqa: E731
    a = _per_sample(sigma, lambda o: model_sampling.noise_scaling(sigma, zeros(o), o.clone()))
    b = _per_sample(sigma, lambda o: model_sampling.noise_scaling(sigma, o.clone(), zeros(o)))
    c = _per_sample(sigma, lambda o: model_sampling.calculate_denoised(sigma, zeros(o), o))
    d = _per_sample(sigma, lambda o: model_sampling.calculate_denoised(sigma, o, zeros(o)))
    return a, b, c, d


@dataclass
class Coefficients:
    """a, b, c, d of the docstring, one value per sample (shape [B]); and the target's own coefficients
    p = (1 − c·a)/d and q = c·b/d, worked out in float64: for flow, 1 − c·a = σ, which float32 would get from
    1 − (1 − σ) with an error of ~eps/σ relative (6e-4 at σ = 1e-4, where Flux's schedule starts)."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    d: torch.Tensor
    p: torch.Tensor | None = None
    q: torch.Tensor | None = None

    @classmethod
    def of(cls, model_sampling, sigma: torch.Tensor) -> "Coefficients":
        a, b, c, d = _maps(model_sampling, sigma.to(torch.float32))
        if torch.any(d == 0):
            raise ValueError("this model's denoiser does not depend on its output at some noise level sigma (d = 0); "
                             "cannot train there")
        a64, b64, c64, d64 = _maps(model_sampling, sigma.to(torch.float64))
        p, q = ((1 - c64 * a64) / d64).float(), (c64 * b64 / d64).float()
        return cls(a, b, c, d, p, q)

    def head(self, n: int) -> "Coefficients":
        """The coefficients of the first n samples."""
        cut = lambda t: None if t is None else t[:n]  # noqa: E731
        return Coefficients(self.a[:n], self.b[:n], self.c[:n], self.d[:n], cut(self.p), cut(self.q))

    def _view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.device)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._view(self.a, x0) * x0 + self._view(self.b, x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """F* from x0 and ε directly: p·x0 − q·ε = ((1 − c·a)·x0 − c·b·ε)/d, exact where it simplifies (ε for
        ε-models, ε − x0 for flow)."""
        v = lambda t: self._view(t, x0)  # noqa: E731
        p = (1 - self.c * self.a) / self.d if self.p is None else self.p
        q = self.c * self.b / self.d if self.q is None else self.q
        return v(p) * x0 - v(q) * noise

    def prediction(self, denoised: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The network's raw output F recovered from x̂0 = c·x_t + d·F."""
        return (denoised - self._view(self.c, x_t) * x_t) / self._view(self.d, x_t)

    def snr(self) -> torch.Tensor:
        return (self.a / self.b) ** 2


def min_snr_weight(coefficients: Coefficients, gamma: float) -> torch.Tensor:
    """Per-sample loss weight in native units; gamma <= 0 turns weighting off (all ones)."""
    if gamma <= 0:
        return torch.ones_like(coefficients.a)
    return torch.clamp(coefficients.snr(), max=gamma) * coefficients.d**2


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error in native units, times `weight`; shape [B].

    pixel_weight [B, 1, h, w] (masked loss): the error of each latent pixel counts with its weight, normalized by the
    weights' mean, Σ w·e² / (C · Σ w): a map of ones is the plain mean, and the loss keeps its scale whatever the
    subject's area (OneTrainer's masked training with its normalize_masked_area_loss option on)."""
    squared = (prediction.float() - target.float()) ** 2
    dims = tuple(range(1, prediction.ndim))
    if pixel_weight is None:
        per_sample = squared.mean(dim=dims)
    else:
        pixel_weight = pixel_weight.to(squared.device, squared.dtype)
        per_sample = (squared * pixel_weight).mean(dim=dims) / pixel_weight.mean(dim=dims)
    return per_sample if weight is None else per_sample * weight.to(per_sample.device)


def sample_sigmas(model_sampling, u: torch.Tensor) -> torch.Tensor:
    """σ for noise levels u ∈ [0, 1] (0 = clean end, 1 = pure-noise end of the schedule).

    Discrete schedules (SD1.5, SDXL: 1000 trained timesteps) take the integer timestep ⌊u·N⌋, as
    DDPM training does; continuous ones use the model's percent_to_sigma.
    """
    sigmas = getattr(model_sampling, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) > 1:
        n = len(sigmas)
        t = torch.clamp((u * n).long(), 0, n - 1)
        return sigmas.to(u.device)[t].float()
    return torch.tensor([float(model_sampling.percent_to_sigma(1.0 - float(x))) for x in u], device=u.device)
