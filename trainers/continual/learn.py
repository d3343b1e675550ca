"""Folding a trained LoRA into the concept pool: the Fisher pass after each concept (Jha et al. 2025, §3.2).

After concept n is trained, its LoRA θ_n is evaluated on the concept's own training images, N draws of
(image, t, ε). Per draw:
- EWC-DC: the DC cross-entropy −log p_θ(c_n | x) over {c_0, k sampled past concepts, c_n} on one shared
  x_t (one batched forward of k + 2 prompts, then one backward);
- LoRA-EWC: the denoising loss ‖F* − F_θ(x_t, c_n)‖² (one forward and backward).
The squared gradients averaged over the draws, scaled to sum 1, are folded into the pool's Fisher with
decay γ (online EWC, fisher.py). Sequential LoRA computes nothing. c_n is each image's own caption.
"""

from collections import Counter
from typing import Callable

import torch

from ..data import IndexStream, TrainingData
from ...lora.fingerprint import patcher_fingerprint
from ...lora.adapter import LoraAdapter
from ..cast_weights import recast_in_backward
from ..model_state import frozen_base
from .ewc import parameter_keys
from .fisher import diagonal_fisher, fold, unit_sum
from .pool import Concept, ConceptPool, check_trained_against
from .scores import dc_cross_entropy, dc_logits, repeat_for_concepts, sample_past
from .seam import AdaptedModel


def concept_fisher(seam: AdaptedModel, adapter: LoraAdapter, x0: torch.Tensor, captions: list[dict], pretrained: dict,
                   past: list[dict], *, source: str, draws: int, k: int, temperature: float,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Mean squared per-draw gradients of the concept's log-likelihood, keyed like the LoRA."""
    keys, params = parameter_keys(adapter)
    order = IndexStream(x0.shape[0], generator)

    def draw_loss() -> torch.Tensor:
        i = int(order.take(1)[0])
        x = x0[i:i + 1]
        u = torch.rand(1, generator=generator)
        noise = torch.randn(x.shape, generator=generator).to(seam.device)
        sigma, x_t, target = seam.noisy(x, u, noise)
        if source == "denoising loss":
            return (seam.predict(x_t, sigma, captions[i]) - target).square().mean()
        subset = sample_past(len(past), k, generator)
        concepts = [pretrained, *(past[j] for j in subset), captions[i]]
        xs, inputs = repeat_for_concepts(x_t, concepts)
        predictions = seam.predict(xs, sigma.repeat(len(concepts)), inputs).view(len(concepts), *x.shape)
        return dc_cross_entropy(dc_logits(predictions, target, temperature), len(concepts) - 1)

    with frozen_base(seam.model), recast_in_backward(seam.model):
        for p in params:
            p.requires_grad_(True)
        try:
            fisher = diagonal_fisher(params, (draw_loss for _ in range(draws)))
        finally:
            for p in params:
                p.requires_grad_(False)
    return dict(zip(keys, (f.cpu() for f in unit_sum(fisher))))


def add_concept(pool: ConceptPool, model_patcher, lora: dict, data: TrainingData, encode: Callable, *, trigger: str,
                prompt: str = "", draws: int, decay: float, k: int, seed: int,
                metadata: dict | None = None) -> ConceptPool:
    """The pool with the new concept: its LoRA snapshot and, for EWC methods, the folded Fisher."""
    pool.check_base(patcher_fingerprint(model_patcher))
    trigger = pool.check_new_trigger(trigger)
    pool.check_lora(lora, f"the LoRA of {trigger!r}")
    check_trained_against(pool, metadata)
    if draws < 1 or k < 1:
        raise ValueError(f"the Fisher needs at least one draw and k >= 1 (got {draws} draws, k = {k})")
    prompt = prompt.strip()
    if not prompt and data.captions:
        prompt = Counter(data.captions).most_common(1)[0][0]  # the caption the concept was trained with
    if not prompt:
        raise ValueError("the concept's prompt is empty and the training data has no captions: give the prompt (e.g. 'a photo of sks dog')")
    record = {"images": len(data), "fisher_source": pool.fisher_source}
    fisher = {}
    if pool.fisher_source:
        adapter = LoraAdapter.from_state_dict(model_patcher.model.diffusion_model, lora)
        adapter.requires_grad_(False)
        seam = AdaptedModel(model_patcher, [adapter])
        x0 = seam.latents(data.same_size_latents("the Fisher of a concept"))
        captions = [seam.inputs(c, x0) for c in data.conditionings]
        pretrained = seam.inputs(encode(pool.pretrained_prompt), x0)
        past = [seam.inputs(encode(c.prompt), x0) for c in pool.concepts]
        new = concept_fisher(seam, adapter, x0, captions, pretrained, past, source=pool.fisher_source, draws=draws, k=k,
                             temperature=pool.temperature, generator=torch.Generator().manual_seed(seed))
        previous = pool.latest.fisher if pool.concepts else None
        keys = sorted(new)
        folded = fold([previous[key] for key in keys] if previous else None, [new[key] for key in keys], decay)
        fisher = dict(zip(keys, folded))
        record.update({"fisher_draws": draws, "fisher_decay": decay, "concepts_per_score": k, "seed": seed})
    if metadata:
        record["training"] = {key: metadata[key] for key in ("steps", "regularizers") if key in metadata}
    lora_tensors = {key: value for key, value in lora.items()}
    return pool.with_concept(Concept(trigger, prompt, lora_tensors, fisher, record))
