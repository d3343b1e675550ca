"""Training step time of continual personalization, as a ratio of the plain-LoRA step (same run, interleaved).

EWC-DC trains against a pool of 5 past concepts (the penalty only; its Fisher pass runs once per
concept and is timed separately, per draw). DSC consolidates against the same pool with k = 1, 3, 5 past
concepts in its DC scores: k + 2 extra trained predictions joined to the training forward and one no-grad
forward of both teachers over 2·(k + 2) samples. The pool's LoRAs and Fisher are random (their values do
not change the cost).
"""

import torch

from ..common import clock, spread
from . import training

NAMES = ("plain", "EWC-DC", "DSC k=1", "DSC k=3", "DSC k=5")
PAST = 5


def synthetic_pool(model, config, past: int = PAST, seed: int = 0):
    """A pool of `past` concepts with random LoRA snapshots and a unit-sum Fisher, and a random teacher LoRA."""
    from ...trainers.continual.pool import Concept, ConceptPool
    from ...lora.fingerprint import model_fingerprint
    from ...lora.adapter import LoraAdapter
    from ...lora.files import LoraWeights

    g = torch.Generator().manual_seed(seed)
    template = LoraAdapter.for_model(model.model.diffusion_model, config.targets, config.rank, config.alpha, g).lora_state_dict()

    def random_lora():
        return {k: v if k.endswith(".alpha") else 0.01 * torch.randn(v.shape, generator=g) for k, v in template.items()}

    pool = ConceptPool(model_fingerprint(model.model.diffusion_model), "EWC-DC", "a photo")
    for i in range(past):
        lora = random_lora()
        fisher = {k: torch.rand(v.shape, generator=g) for k, v in lora.items() if not k.endswith(".alpha")}
        total = sum(float(f.sum()) for f in fisher.values())
        pool = pool.with_concept(Concept(f"concept {i}", f"a photo of sks{i} dog", lora, {k: f / total for k, f in fisher.items()}))
    record = {"base_model_fingerprint": pool.base_fingerprint,
              "regularizers": [{"name": "continual", "method": pool.method, "pool_concepts": pool.triggers}]}
    return pool, LoraWeights(random_lora(), record)  # as Train LoRA's output: trained against this pool


def make_regularizers(name: str, pool, teacher, clip):
    from ...trainers.regularizers.continual import Continual

    if name == "plain":
        return []
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
    conditionings = [encode(c.prompt) for c in pool.concepts]
    if name == "EWC-DC":
        return [Continual(pool, conditionings, encode(pool.pretrained_prompt), ewc_weight=1e4)]
    k = int(name.split("=")[1])
    return [Continual(pool, conditionings, encode(pool.pretrained_prompt), ewc_weight=1e4, distill=True, teacher=teacher,
                      concepts_per_score=k)]


def fisher_draw_seconds(model, clip, data, pool, teacher, draws: int = 4, k: int = 5) -> float:
    """Seconds per draw of the EWC-DC Fisher pass (k + 2 prompts forward, one backward)."""
    from ...trainers.continual.learn import concept_fisher
    from ...trainers.continual.seam import AdaptedModel
    from ...lora.adapter import LoraAdapter
    from ...trainers.model_state import outside_inference_mode

    @outside_inference_mode
    def run():
        encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
        adapter = LoraAdapter.from_state_dict(model.model.diffusion_model, teacher)
        adapter.requires_grad_(False)
        seam = AdaptedModel(model, [adapter])
        x0 = seam.latents(data.latents)
        captions = [seam.inputs(c, x0) for c in data.conditionings]
        past = [seam.inputs(encode(c.prompt), x0) for c in pool.concepts]
        pretrained = seam.inputs(encode(pool.pretrained_prompt), x0)
        kwargs = dict(source="diffusion classifier", k=k, temperature=1.0, generator=torch.Generator().manual_seed(0))
        concept_fisher(seam, adapter, x0, captions, pretrained, past, draws=1, **kwargs)  # warm-up
        start = clock()
        concept_fisher(seam, adapter, x0, captions, pretrained, past, draws=draws, **kwargs)
        return (clock() - start) / draws

    return run()


def paired_ratios(architecture, repeats, steps, rank) -> dict:
    """Every method advanced one optimizer step at a time in rotating order (as regularizers.py)."""
    from ...trainers.config import TrainConfig
    from ...trainers.loop import TrainingRun

    model, clip, data = training.setup_with_clip(architecture)
    config = TrainConfig(steps=10**6, rank=rank, alpha=rank, targets="attention", null_prompt_dropout=0.0)
    pool, teacher = synthetic_pool(model, config)
    runs = {n: TrainingRun(model, data, config, make_regularizers(n, pool, teacher, clip)) for n in NAMES}
    out = training.rotated_step_ratios(runs, repeats * steps)
    plain = out["plain"]["s_per_step"]["median"]
    fisher = fisher_draw_seconds(model, clip, data, pool, teacher)
    out["EWC-DC Fisher pass, per draw (k = 5)"] = {"s_per_step": spread([fisher]), "ratio": spread([fisher / plain])}
    return out
