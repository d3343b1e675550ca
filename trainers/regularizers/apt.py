"""APT: Adaptive Personalized Training (Chae et al., CVPR 2025, arXiv 2507.02687), all three parts.

1. Adaptive training adjustment (ATA). Timesteps fall into B = 10 bins; per bin, an EMA (α = 0.1) of the
   frozen model's loss m_pre and of the LoRA model's loss m_θ on the same noisy inputs. The gap is an
   overfitting indicator
       γ_b = clamp(1 − exp(−T·(m_pre[b] − m_θ[b]) / m_pre[b]), 0, 1),   T = 0.3,
   which sets the probability min(γ_b, p_max) of augmenting a sample (zoom-out 1–3×, rotation ±15°) and
   down-weights its denoising loss by (1 − γ_b). A bin's EMAs start at their first observation; γ is 0
   until then.

   The scale of T. As reported, the paper writes γ_b = 1 − exp(−T·(m_pre − m_θ)) with T = 1000 (the number of
   timesteps) on the losses themselves. The losses here are per-element means, whose size depends on the model,
   its parameterization (the drift benchmark's ε-losses run from ~0.5 at low noise to ~0.01 at high noise; flow
   losses are of order 1 at every noise level) and the latent's scale, so no one T fits: at T = 1000 a gap of 0.005 already gives γ = 0.993, and on the drift
   benchmark γ was ≥ 0.9 in every bin but the noisiest after 300 steps, the loss weight 1 − γ ≈ 0 and the
   subject never learned (fidelity 0.729 against the base model's 0.730 and plain LoRA's 0.888). The default
   indicator acts on the relative gap r = (m_pre − m_θ)/m_pre instead: the share of the base model's loss the LoRA
   has gained in that bin, the same on any model and at any noise level. T sets how hard the adjustment brakes:
   γ ≈ T·r while T·r is small, and γ ≤ 1 − exp(−T) since r ≤ 1. T = 0.3 (the default) caps γ at 0.26, so a bin
   that pulls away from the base model is augmented at most a quarter of the time and its loss weighed at least
   0.74. On the drift benchmark's shipped model, with λ_dist = 0.01 and λ_attn = 10, T = 1 (γ up to 0.63) reached
   77% of plain LoRA's subject-fidelity gain on one seed of four subjects and T = 0.3 99%; over all 18 (subject,
   seed) units T = 0.3 reached 68% and T = 0.1 83%, which is why ATA is off by default (APTConfig says more;
   docs/regularizers.md#apt has the tables).
   indicator_gap = "absolute" with
   T = 1000 is the paper's form as reported (the `apt` recipe, trainers/recipes.py).
2. Representation stabilization (RS): the per-channel mean and standard deviation (over tokens) of every
   watched feature h_l are matched to the frozen model's:
       λ_dist·Σ_l (mean_(b,c) (μ_θ − μ_pre)² + mean_(b,c) (σ_θ − σ_pre)²).
3. Attention alignment (AA): every watched text-attention probability map A_l, averaged over heads (or, setting
   attention_maps = "per head", each head's map), is matched to the frozen model's:
   λ_attn·(1/L)·Σ_l mean_(b,[h,]q,k) (A_θ − A_pre)².

What is watched, per architecture (the paper is written for SDXL's UNet; the DiT reading is this pack's):
- UNet (SD1.x, SDXL): h_l = every self-attention (attn1) output; A_l = every cross-attention (attn2) map
  softmax(QKᵀ/√d), image queries × the prompt's tokens.
- DiT (SD3/SD3.5's MMDiT, Flux), which have one joint attention per block over text and image tokens together:
  h_l = each block's image-stream output, image tokens only (MMDiT joint block: its x output; Flux double block:
  its img output; Flux single block: the image part of x = cat(txt, img)); A_l = each block's joint attention
  softmax(QKᵀ/√d) taken over all keys (text and image), per head, then restricted to image queries × text keys
  and averaged over heads: [B, N_img, N_txt], every text token included (T5 padding too, as the UNet's 77 CLIP
  tokens are). The rows of the restricted block sum to the attention an image token pays to the text, not to 1.
  SD3.5's second attention in its first block (MMDiT-X, image tokens only) is not a text attention: not watched.

The frozen model is the shared frozen forward (LoRA at strength 0, same x_t, σ, prompt). Captures use
ComfyUI's transformer patches on the training clone's forwards only. UNet: `attn1_output_patch`, and an `attn2`
replace that computes the attention with one explicit softmax serving both its output and the head-averaged map;
the self-attention outputs are held as they come and reduced after their forward (frozen) or in the loss
(trained), all layers of one shape stacked and reduced together (`grouped_channel_stats`). DiT: a "dit" block
replacement per block (dit.py says, per family, where the text and image tokens are) that runs the block as the
model would, reduces its image stream to statistics at once, and, inside the block, an
`optimized_attention_override` that lets the model's own attention compute the output and adds the map
(`dit.joint_text_map`, chunked over queries, nothing of size [B, H, N_img, N] kept for backward).

Augmentation (`zoom_out_rotate`) acts on the latents, not on pixels: the training pictures reach the trainer already
encoded (Training Data encodes them once, before the first step), and decoding, augmenting and re-encoding every
augmented sample would cost a VAE round trip per step. The VAE's latent is a local, 8× downsampled map of the picture,
so shrinking it about its centre is close to encoding the shrunk picture; the uncovered border takes the per-channel
mean of the latent's outer ring, i.e. the picture's background (a flat background encodes to a near-constant
latent), never mirrored copies of the subject. Choices where the paper is
silent or unconfirmed (α, T, p_max, clamping, latent-space augmentation, the DiT reading): see docs/papers.md §3;
all but the DiT reading are settings.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import PASS_KEY, Regularizer, StepContext, TrainingSetup, register
from .dit import DiTFamily, attention_heads, dit_family, joint_text_map
from .knobs import MethodConfig, configured, knob


INDICATOR_GAPS = {
    "relative": "(m_pre − m_θ)/m_pre: the share of the base model's loss the LoRA has gained, whatever the model's loss "
                "scale",
    "absolute": "m_pre − m_θ in loss units, as the paper is reported (T = 1000 there)",
}
ATTENTION_MAPS = {
    "head mean": "each layer's map averaged over heads (as attention maps are shown; the default λ_attn's scale)",
    "per head": "every head's map (the formula as written; the same λ_attn pulls harder)",
}


@dataclass(frozen=True)
class APTConfig(MethodConfig):
    """APT: Adaptive Personalized Training (Chae et al., CVPR 2025, arXiv 2507.02687); the module docstring has
    the formulas, docs/papers.md §3 the choices where the paper is silent.

    adaptive_adjustment: adaptive training adjustment (ATA) on or off (default off): per timestep bin, augment a
        sample with probability min(γ_b, p_max) and scale its denoising loss by (1 − γ_b). On the drift benchmark's
        18 (subject, seed) units (docs/regularizers.md#apt) APT with ATA at T = 0.3 reached 0.68 (0.53–0.82) of plain
        LoRA's subject-fidelity gain, at T = 0.1 0.83 (0.69–0.96), and without it 0.98 (0.91–1.05) with less prior
        drift than plain LoRA at the last step (−0.017 RMSE, −0.022 to −0.013); ATA alone drifted 1.41× as much as
        plain LoRA at the same fidelity (augmented latents are pictures the base model never drew). So the default
        leaves it off; the `apt` recipe (trainers/recipes.py) turns it on with the paper's settings.
    representation_weight: λ_dist of representation stabilization (RS), matching the per-channel mean and std of
        every self-attention output (UNet) or block's image-stream output (DiT) to the base model's; 0 turns RS off.
    attention_weight: λ_attn of attention alignment (AA), matching the head-averaged cross-attention probability
        maps (UNet) or the image-query × text-key block of each joint attention (DiT) to the base model's; 0 turns
        AA off. λ_dist = 0.01 and λ_attn = 10 (defaults): at 1 and 1000 the two terms held the subject to a sixth to
        two thirds of plain LoRA's fidelity gain on the drift benchmark; at a hundredth of that APT reaches plain
        LoRA's gain (docs/regularizers.md#apt).
    attention_maps: what AA compares: "head mean", the maps averaged over heads (the default: the paper's figures
        compare per-token maps as attention is usually shown, averaged over heads, and λ_attn's default was set on
        that scale); "per head", every head's map (A_l = softmax(QKᵀ/√d) per head, as the formula is written;
        stricter: the mean squared difference over heads is at least that of the head means, so the same λ_attn
        pulls harder, and heads cannot trade attention between them).
    p_max: upper bound of ATA's augmentation probability.
    zoom_max: ATA's zoom-out factor is drawn from [1, zoom_max] (paper: 1-3).
    rotation_degrees: ATA's rotation is drawn from ±this many degrees (paper: 15).
    bins: B, the number of timestep bins of the overfitting indicator (paper: 10).
    ema: α, the EMA rate of each bin's frozen and trained losses (0.1, as secondary sources report the paper's).
    temperature: T in γ_b = clamp(1 − exp(−T·gap), 0, 1). Default 0.3 on the relative gap (the module docstring
        says why); the paper, as secondary sources report it, uses T = 1000 on the absolute gap.
    indicator_gap: the gap T multiplies: "relative", (m_pre − m_θ)/m_pre (the default); "absolute", m_pre − m_θ in
        loss units (the paper as reported).
    """

    method: ClassVar[str] = "APT"

    adaptive_adjustment: bool = knob(False, "ATA: augmentation with probability min(γ, p_max) and loss × (1 − γ) per "
                                     "timestep bin. Off by default: on the drift benchmark it cost a sixth to a third of "
                                     "the subject's fidelity gain and added drift; on reproduces the paper.")
    representation_weight: float = knob(0.01, "λ_dist of representation stabilization (per-channel mean/std of "
                                        "self-attention outputs, or of each DiT block's image tokens, matched to the base "
                                        "model's); 0 = off. At 1 it held the subject back on the drift benchmark; 0.01 learns as plain LoRA does.",
                                        min=0.0, max=1e6, step=0.001)
    attention_weight: float = knob(10.0, "λ_attn of attention alignment (cross-attention probability maps, or each "
                                   "DiT joint attention's image-query × text-key block, matched to the base model's); 0 "
                                   "= off. The maps' squared differences are small (~1e-6), hence a weight far above "
                                   "representation_weight's.", min=0.0, max=1e8, step=1.0)
    p_max: float = knob(0.8, "Upper bound of the augmentation probability.", min=0.0, max=1.0, step=0.05)
    zoom_max: float = knob(3.0, "Zoom-out factor drawn from [1, zoom_max] (paper: 1-3).", min=1.0, max=8.0, step=0.1)
    rotation_degrees: float = knob(15.0, "Rotation drawn from ±this many degrees (paper: 15).", min=0.0, max=180.0,
                                   step=1.0)
    bins: int = knob(10, "Timestep bins of the indicator (paper: 10).", min=1, max=100)
    ema: float = knob(0.1, "EMA rate α of the per-bin losses (0.1 as reported from the paper by secondary sources).",
                      min=0.001, max=1.0, step=0.01)
    temperature: float = knob(0.3, "T in γ = 1 − exp(−T·gap). On the relative gap (the default) 0.3 gives γ ≈ 0.3 × "
                              "the share of the base model's loss the LoRA has gained, at most 0.26; the paper, as "
                              "reported, uses 1000 on the absolute gap, which on small models stops the learning.",
                              min=0.01, max=1e6, step=0.05)
    indicator_gap: str = knob("relative", "What T multiplies in γ.", options=INDICATOR_GAPS)
    attention_maps: str = knob("head mean", "What attention alignment compares.", options=ATTENTION_MAPS)


class OverfitIndicator:
    """Per-bin EMAs of the frozen and the trained model's losses, and γ from their gap (APT eq. for γ_b); `gap`
    "absolute" is m_pre − m_θ, "relative" (m_pre − m_θ)/m_pre (INDICATOR_GAPS)."""

    def __init__(self, bins: int, ema: float, temperature: float, gap: str = "absolute"):
        self.bins, self.ema, self.temperature, self.relative = bins, ema, temperature, gap == "relative"
        self.reset()

    def reset(self) -> None:
        """Fresh, empty EMAs (made where they are used: nodes run under inference mode, training does not)."""
        self.m_pre = torch.zeros(self.bins, dtype=torch.float64)
        self.m_theta = torch.zeros(self.bins, dtype=torch.float64)
        self.seen = torch.zeros(self.bins, dtype=torch.bool)

    def bin_of(self, u: torch.Tensor) -> torch.Tensor:
        return torch.clamp((u * self.bins).long(), 0, self.bins - 1).cpu()

    def update(self, bins: torch.Tensor, loss_pre: torch.Tensor, loss_theta: torch.Tensor) -> None:
        bins, loss_pre, loss_theta = bins.cpu(), loss_pre.detach().double().cpu(), loss_theta.detach().double().cpu()
        for b in bins.unique().tolist():
            mask = bins == b
            pre, theta = loss_pre[mask].mean(), loss_theta[mask].mean()
            if self.seen[b]:
                self.m_pre[b] = (1 - self.ema) * self.m_pre[b] + self.ema * pre
                self.m_theta[b] = (1 - self.ema) * self.m_theta[b] + self.ema * theta
            else:
                self.m_pre[b], self.m_theta[b], self.seen[b] = pre, theta, True

    def gamma(self, bins: torch.Tensor) -> torch.Tensor:
        gap = self.m_pre[bins.cpu()] - self.m_theta[bins.cpu()]
        if self.relative:
            gap = gap / self.m_pre[bins.cpu()].clamp_min(1e-12)
        g = torch.clamp(1 - torch.exp(-self.temperature * gap), 0.0, 1.0)
        return torch.where(self.seen[bins.cpu()], g, torch.zeros_like(g)).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"m_pre": self.m_pre.clone(), "m_theta": self.m_theta.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.m_pre, self.m_theta, self.seen = state["m_pre"].clone(), state["m_theta"].clone(), state["seen"].clone()


def border_fill(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel mean of the picture's outermost ring of pixels, [B, C]: the background a zoom-out
    shows around the shrunk picture (photos of a subject have background at their edges)."""
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    return ring.mean(dim=-1)


def zoom_out_rotate(x: torch.Tensor, scale: torch.Tensor, degrees: torch.Tensor,
                    fill: torch.Tensor | None = None) -> torch.Tensor:
    """APT's augmentation: each sample's picture [B, C, H, W] shrunk about its centre by `scale` (≥ 1) and rotated by
    `degrees`; every pixel the shrunk or turned picture no longer covers takes `fill` ([B, C]; default
    `border_fill`, the picture's own background). One copy of the picture, not the mirrored tiles a reflecting
    border would make. Bilinear; at scale 2 on an even-sized picture the pixels land exactly (one output pixel
    from two input pixels' midpoint)."""
    fill = (border_fill(x) if fill is None else fill).to(x).reshape(x.shape[0], x.shape[1], 1, 1)
    angle = degrees * math.pi / 180
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale  # sampling grid grows by `scale`: content shrinks
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # zeros outside the picture for x − fill, so fill outside it for x
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def channel_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std over tokens of [..., N, C] features: two float32 [..., C] tensors.

    On a CPU, as two plain reductions: the mean, then the mean of squared deviations from it. torch's CPU
    std_mean over a dimension that is not the innermost runs about 5× slower than the two (1.6 ms against
    0.34 ms for the bench model's ten self-attention outputs, forward only). Elsewhere torch.std_mean, one kernel.
    """
    x = features.float()
    if x.device.type != "cpu":
        std, mean = torch.std_mean(x, dim=-2, correction=0)
        return mean, std
    mean = x.mean(dim=-2, keepdim=True)
    return mean.squeeze(-2), (x - mean).square().mean(dim=-2).sqrt()


class StackedChannelStats(torch.autograd.Function):
    """`channel_stats` of same-shape features stacked: (mean, std), each [layers, B, C].

    For backward it keeps the features themselves (references to tensors the forward made anyway, in their own
    dtype) and recomputes the deviations, where autograd would keep the stack's float32 deviations:
    ∂μ/∂x = 1/N and ∂σ/∂x = (x − μ)/(N·σ) per channel. The stacked copies live only inside forward and backward.
    """

    @staticmethod
    def forward(ctx, *features):
        mean, std = channel_stats(torch.stack(features))
        ctx.save_for_backward(mean, std, *features)
        return mean, std

    @staticmethod
    def backward(ctx, grad_mean, grad_std):
        mean, std, *features = ctx.saved_tensors
        x = torch.stack(features).to(mean.dtype)
        tokens = x.shape[-2]
        # σ = 0 (a constant channel): x − μ is 0 there, and so is the σ part of the gradient
        grad = (x - mean.unsqueeze(-2)) * (grad_std / (tokens * std.clamp_min(1e-30))).unsqueeze(-2)
        grad = grad + (grad_mean / tokens).unsqueeze(-2)
        return tuple(grad.to(features[0].dtype).unbind(0))


STACK_BYTES = 8 << 20  # most float32 bytes of features reduced in one stack


def grouped_channel_stats(features: list[torch.Tensor]) -> dict[tuple, tuple[torch.Tensor, torch.Tensor]]:
    """`channel_stats` of [B, N, C] features, consecutive layers of one shape stacked and reduced together
    (`StackedChannelStats`), at most STACK_BYTES of them at a time: {(shape, chunk): (mean, std)}, each
    [layers in the chunk, B, C], layers in the order given.

    Small features are what make the per-layer form slow, its cost being per operation (on a GPU, per kernel
    launch; on the CPU bench, representation stabilization alone went from 1.45× to 1.41× a plain step with DCO
    at 1.41×, `bench speed --only apt-parts`): the bench model's ten layers make one chunk per shape. Large ones are
    reduced a few at a time, so the stack's transient copies stay small next to the step's own memory (SDXL's
    self-attention outputs at 1024 px are 5–10 MB each in float32).
    """
    groups: dict[tuple, list[torch.Tensor]] = {}
    for f in features:
        groups.setdefault(tuple(f.shape), []).append(f)
    out = {}
    for shape, group in groups.items():
        per_stack = max(1, STACK_BYTES // (4 * group[0].numel()))
        for chunk, start in enumerate(range(0, len(group), per_stack)):
            out[shape, chunk] = StackedChannelStats.apply(*group[start : start + per_stack])
    return out


def representation_distance(trained: dict, reference: dict) -> torch.Tensor:
    """APT's representation term before λ_dist, from the statistics of both forwards (`grouped_channel_stats`, or
    one entry per DiT block), keyed alike, each (mean, std) [layers, B, C]:
    Σ_l mean_(b,c) (μ_θ − μ_pre)² + mean_(b,c) (σ_θ − σ_pre)² over all layers l."""
    layout = {key: mean.shape for key, (mean, _) in trained.items()}
    if layout != {key: mean.shape for key, (mean, _) in reference.items()}:
        raise RuntimeError(f"APT captured features of other shapes or counts in the trained forward "
                           f"({_describe(trained)}) than in the frozen one ({_describe(reference)}): the two forwards differ")
    total = None
    for key, (mean_t, std_t) in trained.items():
        mean_r, std_r = reference[key]
        term = ((mean_t - mean_r).square().sum() + (std_t - std_r).square().sum()) / (mean_t.shape[-2] * mean_t.shape[-1])
        total = term if total is None else total + term
    return total


def _describe(stats: dict) -> str:
    return ", ".join(f"{mean.shape[0]}× {list(shape)}" for (shape, _), (mean, _) in stats.items()) or "none"


def attention_probabilities(q, k, heads: int) -> torch.Tensor:
    """softmax(QKᵀ/√d) per head: [B, heads, Nq, Nk] from projected q [B, Nq, H·d] and k [B, Nk, H·d], in float32
    whatever autocast says (the maps' differences are ~1e-6, below bf16's rounding of the logits)."""
    b, nq, width = q.shape
    d = width // heads
    q = q.view(b, nq, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    with torch.autocast(q.device.type, enabled=False):
        return torch.softmax((q.float() @ k.float().transpose(-1, -2)) * d**-0.5, dim=-1)


def attention_with_map(q, k, v, heads: int, per_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QKᵀ/√d)·V per head on projected [B, N, H·d] tensors, and the map averaged over heads [B, Nq, Nk]
    (`per_head`: every head's, [B, H, Nq, Nk]).

    One explicit softmax serves both. Backward keeps the per-head probabilities (Nk is the prompt's 77 tokens,
    small next to the activations: +1% peak memory on the bench model), which was measured faster than a fused
    attention plus a map recomputed in backward (APT step 1.48× plain LoRA against 1.55×).
    """
    probs = attention_probabilities(q, k, heads)
    b, nq, _ = q.shape
    values = v.view(b, v.shape[1], heads, -1).transpose(1, 2)
    out = (probs.to(v.dtype) @ values).transpose(1, 2).reshape(b, nq, -1)
    return out, probs if per_head else probs.mean(dim=1)


@register
class APT(Regularizer):
    name = "apt"
    needs_frozen_prediction = True

    def __init__(self, config: APTConfig | None = None, **overrides):
        """`APT()` is the node's default; `APT(adaptive_adjustment=False)` overrides one setting."""
        self.config = c = configured(APTConfig, config, overrides)
        self.ata = c.adaptive_adjustment
        self.lambda_dist, self.lambda_attn = c.representation_weight, c.attention_weight
        self.per_head = c.attention_maps == "per head"
        self.p_max, self.zoom_max, self.rotation = c.p_max, c.zoom_max, c.rotation_degrees
        self.indicator = OverfitIndicator(c.bins, c.ema, c.temperature, c.indicator_gap)
        self.captured: dict[str, dict] = {}  # per forward ("train", "frozen"): what the patches saw, until the loss
        self.setup: TrainingSetup | None = None

    def settings(self) -> dict:
        return self.config.as_dict()

    def prepare(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.indicator.reset()  # a new run starts without history (a resume loads it afterwards)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.indicator.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.indicator.load_state_dict(state)

    def log_values(self) -> dict[str, torch.Tensor]:
        """γ of every timestep bin (0 where the bin has not been seen yet), as the next step will use it."""
        return {"gamma": self.indicator.gamma(torch.arange(self.indicator.bins))} if self.ata else {}

    # ---- ATA: before the forward ------------------------------------------------------------
    def augment(self, x0: torch.Tensor, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment each sample with probability min(γ of its bin, p_max)."""
        if not self.ata:
            return x0
        gamma = self.indicator.gamma(self.indicator.bin_of(u))
        draw = torch.rand(x0.shape[0], generator=generator)
        scale = 1 + (self.zoom_max - 1) * torch.rand(x0.shape[0], generator=generator)
        degrees = self.rotation * (2 * torch.rand(x0.shape[0], generator=generator) - 1)
        chosen = draw < torch.clamp(gamma, max=self.p_max)
        if not chosen.any():
            return x0
        augmented = zoom_out_rotate(x0, scale.to(x0.device), degrees.to(x0.device))
        return torch.where(chosen.to(x0.device).view(-1, 1, 1, 1), augmented, x0)

    def denoising_weight(self, u: torch.Tensor) -> torch.Tensor:
        if not self.ata:
            return torch.ones_like(u)
        return 1 - self.indicator.gamma(self.indicator.bin_of(u))

    # ---- RS / AA: capture during both forwards ----------------------------------------------
    def begin_pass(self, name: str) -> None:
        self.captured[name] = {"features": [], "maps": [], "stats": {}}

    def end_pass(self, name: str) -> None:
        """The frozen features are reduced to their statistics at once, so they are not held through the trained
        forward."""
        if name == "frozen" and self.captured.get(name, {}).get("features"):
            self.captured[name]["stats"] = grouped_channel_stats(self.captured[name].pop("features"))

    def transformer_patches(self, diffusion_model) -> dict:
        if self.lambda_dist == 0 and self.lambda_attn == 0:
            return {}
        family = dit_family(diffusion_model)
        if family is not None:
            return {"patches_replace": {"dit": {key: self._dit_block(family, diffusion_model, key)
                                                for key in family.blocks(diffusion_model)}}}
        if not hasattr(diffusion_model, "input_blocks"):
            raise ValueError(f"APT's representation and attention terms know the SD1.x/SDXL UNet, SD3's MMDiT and Flux, "
                             f"not {type(diffusion_model).__name__}: set representation_weight and attention_weight to 0 "
                             f"to train with the adaptive adjustment alone")
        out = {}
        if self.lambda_dist > 0:
            out["patches"] = {"attn1_output_patch": [self._capture_self_attention]}
        if self.lambda_attn > 0:
            out["patches_replace"] = {"attn2": {key: self._cross_attention for key in transformer_blocks(diffusion_model)}}
        return out

    def _capture_self_attention(self, n, extra_options):
        self._store(extra_options, "features", n)
        return n

    def _cross_attention(self, q, k, v, extra_options):
        out, attention_map = attention_with_map(q, k, v, extra_options["n_heads"], self.per_head)
        self._store(extra_options, "maps", attention_map)
        return out

    def _dit_block(self, family: DiTFamily, diffusion_model, key: tuple[str, int]):
        """ComfyUI's "dit" replacement of one block: runs it as the model would and, in a forward APT watches, reduces
        its image stream to statistics (RS) and, through an attention override inside the block, maps its joint
        attention (AA)."""

        def replacement(args: dict, extra: dict) -> dict:
            options = args["transformer_options"]
            store = self.captured.get(options.get(PASS_KEY, "train"))
            if store is None:
                return family.run(diffusion_model, key, args, extra, options)
            text, image, total = family.tokens(diffusion_model, key, args)
            maps: list = []
            if self.lambda_attn > 0:
                override = _mapping_joint_attention(options.get("optimized_attention_override"), text, image, total, maps,
                                                    self.per_head)
                options = {**options, "optimized_attention_override": override}
            out = family.run(diffusion_model, key, args, extra, options)
            if self.lambda_attn > 0:
                override.done = True  # a rerun of the block in backward (gradient checkpointing) adds no map
                if len(maps) != 1:
                    raise RuntimeError(f"APT found {len(maps)} joint attentions over {total} tokens in {family.name} "
                                       f"block {key}, expected one")
                store["maps"].append(maps[0])
            if self.lambda_dist > 0:
                tokens = family.image_stream(key, out, image)
                if family.writes_inputs_in_place and tokens.requires_grad and torch.is_grad_enabled():
                    tokens = tokens.clone()  # the next block adds into it; the statistics' backward reads it
                store["stats"][tuple(tokens.shape[1:]), len(store["stats"])] = StackedChannelStats.apply(tokens)
            return out

        return replacement

    def _store(self, extra_options, kind: str, tensor: torch.Tensor) -> None:
        """Keep a capture of the running forward; none once the loss is formed (gradient checkpointing reruns
        the trained forward's blocks in backward, and those reruns are not new observations)."""
        store = self.captured.get(extra_options.get(PASS_KEY, "train"))
        if store is not None:
            store[kind].append(tensor)

    # ---- the loss ---------------------------------------------------------------------------
    def loss(self, ctx: StepContext) -> torch.Tensor:
        frozen = ctx.frozen_prediction  # the step's frozen forward, which captured the reference features and maps
        if self.ata:
            loss_theta = ((ctx.prediction.detach() - ctx.target) ** 2).mean(dim=tuple(range(1, ctx.target.ndim)))
            loss_pre = ((frozen - ctx.target) ** 2).mean(dim=tuple(range(1, ctx.target.ndim)))
            self.indicator.update(self.indicator.bin_of(ctx.u), loss_pre, loss_theta)
        total = ctx.x0.new_zeros(())
        train, ref = self.captured["train"], self.captured["frozen"]
        n = ctx.x0.shape[0]  # the trained forward may carry other regularizers' examples after these
        if self.lambda_dist > 0 and (train["features"] or train["stats"]):
            if train["features"]:  # UNet: self-attention outputs, reduced here
                trained = grouped_channel_stats([t[:n] for t in train["features"]])
            else:  # DiT: each block's statistics, reduced as it ran
                trained = {key: (mean[:, :n], std[:, :n]) for key, (mean, std) in train["stats"].items()}
            total = total + self.lambda_dist * representation_distance(trained, ref.get("stats", {}))
        if self.lambda_attn > 0 and train["maps"]:
            # per layer: the maps are large, and a concatenation copies them (measured: APT 1.05× → 1.11× plain peak)
            aa = sum(F.mse_loss(a[:n], b, reduction="mean") for a, b in zip(train["maps"], ref["maps"], strict=True))
            total = total + self.lambda_attn * aa / len(train["maps"])
        self.captured = {}  # let go: autograd holds what backward needs, and nothing else should outlive the step
        return total


def _mapping_joint_attention(previous, text: slice, image: slice, total: int, maps: list, per_head: bool = False):
    """An `optimized_attention_override` for one DiT block: every attention call runs as it would (the model's own
    attention function, or the override already in place), and the joint one (over all `total` tokens) adds its
    image-query × text-key map to `maps`."""

    def override(func, *args, **kwargs):
        out = previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
        q, k = args[0], args[1]
        heads = kwargs["heads"] if "heads" in kwargs else args[3]
        skip_reshape = kwargs.get("skip_reshape", False)
        if attention_heads(q, heads, skip_reshape).shape[2] == total:
            # computed in a rerun too (gradient checkpointing recomputes what the first run saved, in order)
            attention_map = joint_text_map(q, k, heads, skip_reshape, text, image, kwargs.get("mask"), per_head)
            if not override.done:
                maps.append(attention_map)
        return out

    override.done = False
    return override


def transformer_blocks(diffusion_model) -> list[tuple]:
    """The (block name, index) keys ComfyUI's UNet gives its blocks, every one: the cross-attention replacement is
    looked up by `transformer_options["block"]`, which the UNet overwrites as its forward moves on, so a block that
    gradient checkpointing recomputes in backward reads the last block's key; registered under every key, the
    recomputation runs the same attention as the forward did (a key missing there made SDXL's recomputation run
    ComfyUI's attention instead: "Recomputed values ... have different metadata")."""
    keys = [("input", i) for i in range(len(getattr(diffusion_model, "input_blocks", [])))]
    keys += [("output", i) for i in range(len(getattr(diffusion_model, "output_blocks", [])))]
    if getattr(diffusion_model, "middle_block", None) is not None:
        keys.append(("middle", 0))
    return keys
