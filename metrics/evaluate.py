"""The metrics over image batches, given loaded backbones (formulas in formulas.py, DreamBench conventions).

Each image batch is quantized to 8 bits once for both backbones; each CLIP image embedding is computed once and
serves both CLIP-I and CLIP-T; each distinct prompt is encoded once; reference images (and base-model samples) go through the backbones' embedding cache, so scoring
several generated batches against one reference set embeds the references once.
"""

from dataclasses import dataclass, field

import torch

from . import formulas
from . import prompts as prompt_rules
from .preprocess import to_8bit


@dataclass
class Scores:
    """One metric: per-image values (or per pair), their summary, and which backbone produced them."""

    name: str
    values: list[float]
    backbone: str
    summary: dict = field(init=False)

    def __post_init__(self):
        self.summary = formulas.summary(self.values)

    @property
    def mean(self) -> float:
        return self.summary["mean"]


@dataclass
class MetricsResult:
    scores: dict[str, Scores]
    clip_prompts: list[str] = field(default_factory=list)   # the text CLIP-T compared each image with
    prompts: list[str] = field(default_factory=list)        # the prompt of each image as given
    notes: list[str] = field(default_factory=list)
    backbones: dict[str, dict] = field(default_factory=dict)


def personalization_metrics(generated: torch.Tensor, reference: torch.Tensor, prompts: list[str], clip=None, dino=None,
                            identifiers: list[str] = (), class_noun: str = "") -> MetricsResult:
    """DINO, CLIP-I and CLIP-T of a generated IMAGE batch against a reference IMAGE batch.

    `prompts` has 1, N or a divisor of N entries (prompts.per_image); CLIP-T uses each prompt with its
    identifiers removed or replaced by `class_noun` (prompts.neutralize). A backbone left None skips its metrics.
    """
    if clip is None and dino is None:
        raise ValueError("choose at least one backbone (CLIP for CLIP-T and CLIP-I, DINO for DINO)")
    n = generated.shape[0]
    if n == 0 or reference.shape[0] == 0:
        raise ValueError(f"need generated and reference images, got {n} and {reference.shape[0]}")
    result = MetricsResult(scores={})
    generated, reference = to_8bit(generated), to_8bit(reference)  # once, shared by both backbones
    if clip is not None:
        image_embeds = clip.embed_images(generated)
        ref_embeds = clip.embed_images(reference, cache=True)
        result.scores["clip_i"] = Scores("CLIP-I", formulas.pairwise_similarity(image_embeds, ref_embeds).tolist(), clip.name)
        result.backbones["clip"] = clip.describe()
        if clip.has_text:
            result.prompts = prompt_rules.per_image(prompts, n)
            result.clip_prompts = [prompt_rules.neutralize(p, list(identifiers), class_noun) for p in result.prompts]
            text_embeds = clip.embed_texts(result.clip_prompts)
            result.scores["clip_t"] = Scores("CLIP-T", formulas.rowwise_similarity(image_embeds, text_embeds).tolist(),
                                             clip.name)
        else:
            result.notes.append(f"CLIP-T not computed: {clip.name} is a vision-only CLIP (no text tower)")
    if dino is not None:
        gen, ref = dino.embed_images(generated), dino.embed_images(reference, cache=True)
        result.scores["dino"] = Scores("DINO", formulas.pairwise_similarity(gen, ref).tolist(), dino.name)
        result.backbones["dino"] = dino.describe()
    if prompts and not result.prompts:
        result.prompts = prompt_rules.per_image(prompts, n)
    return result


def drift_metrics(base: torch.Tensor, personalized: torch.Tensor, clip=None, dino=None, prompts: list[str] = (),
                  identifiers: list[str] = ()) -> MetricsResult:
    """Per-pair CLIP-I and DINO similarity of base-model and personalized-model samples drawn at the same seeds
    and prompts (prior prompts, without the identifier): higher means the personalization drifted less."""
    if clip is None and dino is None:
        raise ValueError("choose at least one backbone (CLIP or DINO)")
    if base.shape[0] != personalized.shape[0] or base.shape[0] == 0:
        raise ValueError(f"base and personalized batches must pair up image for image (same seeds), got "
                         f"{base.shape[0]} and {personalized.shape[0]} images")
    result = MetricsResult(scores={})
    base, personalized = to_8bit(base), to_8bit(personalized)  # once, shared by both backbones
    if prompts:
        result.prompts = prompt_rules.per_image(list(prompts), base.shape[0])
        flagged = sorted({p for p in result.prompts if prompt_rules.contains_identifier(p, list(identifiers))})
        if flagged:
            result.notes.append("these prompts contain the identifier, so their pairs measure the personalization, "
                                "not drift on prior prompts: " + "; ".join(flagged))
    for key, backbone, label in (("clip_i", clip, "CLIP-I"), ("dino", dino, "DINO")):
        if backbone is not None:
            a = backbone.embed_images(base, cache=True)
            b = backbone.embed_images(personalized)
            result.scores[key] = Scores(label, formulas.rowwise_similarity(a, b).tolist(), backbone.name)
            result.backbones["clip" if key == "clip_i" else "dino"] = backbone.describe()
    return result
