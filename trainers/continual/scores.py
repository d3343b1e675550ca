"""Diffusion-classifier (DC) scores (Jha et al., ICLR 2025, §3; after Li et al., ICCV 2023, eq. 5).

For a noisy latent x_t = a·x0 + b·ε drawn once and shared by every concept, and concepts
C = {c_0, c_j1, …, c_jk, c_n} (c_0 the pretrained concept, a sampled subset of k past concepts, the
current one):

    e_j(x)       = ‖F* − F_θ(x_t, c_j, t)‖²                      (summed over the latent; F* = ε for ε-models)
    p_θ(c_j | x) = exp(−e_j / τ) / Σ_{c∈C} exp(−e_c / τ)          (softmax of negative denoising errors)

τ = 1 is the paper's score. The errors are in the model's native parameterization (ε, v or flow), the
same units as the training loss. Everything here is plain torch on predictions already computed; the
caller batches the K concept forwards of one draw into one forward (`repeat_for_concepts`).
"""

import torch
import torch.nn.functional as F


def dc_errors(predictions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """e[b, j] = ‖target_b − predictions_{j,b}‖²; predictions [K, B, ...], target [B, ...] → [B, K]."""
    diff = predictions.float() - target.float().unsqueeze(0)
    return diff.square().flatten(2).sum(dim=-1).transpose(0, 1)


def dc_logits(predictions: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """−e / τ, [B, K]: the DC scores before the softmax."""
    if temperature <= 0:
        raise ValueError(f"the DC score temperature must be > 0, got {temperature}")
    return -dc_errors(predictions, target) / temperature


def dc_scores(predictions: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p_θ(c_j | x), [B, K]; each row sums to 1."""
    return torch.softmax(dc_logits(predictions, target, temperature), dim=-1)


SHARP = 0.99  # a score vector whose largest probability is above this is one-hot for the Fisher and DSC's targets


def sharpness(logits: torch.Tensor) -> dict:
    """How peaked score vectors are: over DC logits [N, K], the median of the softmax's largest probability and the
    share of vectors above SHARP. Near 1 everywhere, −log p of the true concept has almost no gradient where it is
    right and DSC's soft targets are one-hot: τ is too small for the errors' scale (they grow with the latent's
    size: they are sums over it)."""
    largest = torch.softmax(logits.float(), dim=-1).max(dim=-1).values
    return {"median_largest_probability": float(largest.median()), "share_sharp": float((largest > SHARP).float().mean()),
            "score_vectors": int(largest.numel())}


def dc_cross_entropy(logits: torch.Tensor, true_index: int) -> torch.Tensor:
    """−log p_θ(c_true | x), averaged over the batch: the loss whose gradients make the EWC-DC Fisher."""
    labels = torch.full((logits.shape[0],), true_index, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def soft_cross_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """H(p_T, p_S) = −Σ_j p_T(j)·log p_S(j), averaged over the batch (teacher detached)."""
    p_teacher = torch.softmax(teacher_logits.detach(), dim=-1)
    return -(p_teacher * torch.log_softmax(student_logits, dim=-1)).sum(dim=-1).mean()


def sample_past(count: int, k: int, generator: torch.Generator, include: int | None = None) -> list[int]:
    """k of the `count` past concepts (all when k ≥ count), drawn without replacement, in pool order.

    `include` is always among them (DSC: the concept of the drawn past teacher).
    """
    if k >= count:
        return list(range(count))
    others = [i for i in range(count) if i != include]
    wanted = k - (include is not None)
    order = torch.randperm(len(others), generator=generator)[:wanted].tolist()
    chosen = {others[i] for i in order} | ({include} if include is not None else set())
    return sorted(chosen)


def repeat_for_concepts(x: torch.Tensor, concept_inputs: list[dict]) -> tuple[torch.Tensor, dict]:
    """x [B, ...] repeated once per concept (concept-major) and the concepts' model inputs to match.

    Each concept's inputs hold either one example (repeated B times) or B (one per sample, e.g. the
    micro-batch's own captions).
    """
    b = x.shape[0]
    batched = {}
    for name in concept_inputs[0]:
        values = [inputs[name] for inputs in concept_inputs]
        if isinstance(values[0], torch.Tensor):
            batched[name] = torch.cat([_to_batch(v, b) for v in values])
        else:
            if any(v != values[0] for v in values[1:]):
                raise ValueError(f"model input {name!r} differs between concepts")
            batched[name] = values[0]
    return x.repeat(len(concept_inputs), *([1] * (x.ndim - 1))), batched


def _to_batch(value: torch.Tensor, b: int) -> torch.Tensor:
    if value.shape[0] == b:
        return value
    if value.shape[0] == 1:
        return value.expand(b, *value.shape[1:])
    raise ValueError(f"concept inputs have batch {value.shape[0]}, expected 1 or {b}")
