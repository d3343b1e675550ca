"""Diffusion-score consolidation, DSC (Jha et al., ICLR 2025, §3.3; after Deep Model Consolidation,
Zhang et al., WACV 2020).

A student (initialized from teacher 1) is distilled on the current concept's images only, from
teacher 1 = the LoRA just trained on concept n and teacher 2 = a LoRA drawn at random from the pool of
past concepts (concept j). On one shared x_t and concepts C_sub = {c_0, past subset ∋ c_j, c_n}:

    L_DSC = w_s·[ H(p_T1, p_S) + H(p_T2, p_S) ]                                  (DC-score distillation)
          + w_ε·[ ‖F_T1(x_t, c_n) − F_S(x_t, c_n)‖² + ‖F_T2(x_t, c_j) − F_S(x_t, c_j)‖² ]   (noise-prediction distillation)

p = softmax over C_sub of the DC logits (scores.py) and H the cross-entropy with soft (teacher) targets.
Both terms reduce alike: the DC logits are squared errors summed over the latent (the diffusion classifier's e_j,
τ = 1 the paper's score), so the noise-prediction squared errors are summed over the latent too, and both terms are
averaged over the batch. (With per-element means in the second term, its gradient per element was 1/N of the
first's, N the latent's size, 4096 at SD1.5's 512 px: w_ε did nothing at w_ε = w_s.) Teachers carry no gradient.
"""

import torch

from .scores import dc_logits, soft_cross_entropy


def dsc_loss(student: torch.Tensor, teacher_current: torch.Tensor, teacher_past: torch.Tensor, target: torch.Tensor, *,
             current: int, past: int, temperature: float, score_weight: float, noise_weight: float) -> torch.Tensor:
    """student / teacher predictions [K, B, ...] over C_sub (same order), target [B, ...];
    `current` and `past` index c_n and c_j in C_sub; the weights come from the continual regularizer's settings
    (ContinualConfig) and the temperature from the pool."""
    teacher_current, teacher_past = teacher_current.detach(), teacher_past.detach()
    total = student.new_zeros((), dtype=torch.float32)
    if score_weight:
        s = dc_logits(student, target, temperature)
        scores = soft_cross_entropy(dc_logits(teacher_current, target, temperature), s) \
            + soft_cross_entropy(dc_logits(teacher_past, target, temperature), s)
        total = total + score_weight * scores
    if noise_weight:
        noise = summed_squared_error(student[current], teacher_current[current]) \
            + summed_squared_error(student[past], teacher_past[past])
        total = total + noise_weight * noise
    return total


def summed_squared_error(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """‖prediction − reference‖² summed over each sample's latent, averaged over the batch (as the DC errors, scores.py)."""
    return (prediction.float() - reference.float()).square().flatten(1).sum(dim=1).mean()
