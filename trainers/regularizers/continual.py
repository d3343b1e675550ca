"""Continual personalization (Jha et al., "Mining your own secrets", ICLR 2025, §3.2-3.3).

Concept n is trained starting from the pool's LoRA θ*_{n−1} (one LoRA fine-tuned concept after
concept), with, by the pool's method:

- EWC-DC / LoRA-EWC:  + (λ/2)·Σ_i F_i·(θ_i − θ*_{n−1,i})²   (F from the pool: DC-score or denoising Fisher)
- sequential LoRA:    nothing (the baseline that forgets)

and, when `distill` is on (diffusion-score consolidation, a second run per concept): the run starts from
teacher 1 (the LoRA just trained on concept n) and trains on L_DSC instead of the denoising loss, plus
the EWC penalty if the method has one:

    L_DSC = w_s·[H(p_T1, p_S) + H(p_T2, p_S)] + w_ε·[‖F_T1(c_n) − F_S(c_n)‖² + ‖F_T2(c_j) − F_S(c_j)‖²]

Teacher 2 is the LoRA of a past concept j drawn at random each step; the DC scores are over c_0, k past
concepts (j among them) and the micro-batch's own captions (c_n), on the micro-batch's x_t (shared by
every concept). The student's k + 2 predictions join the trainer's batched forward; both teachers run
in one no-grad forward on the same loaded weights, as two more activation-space adapters with a
per-sample strength (no second model). Math: trainers/continual/{ewc,dsc,scores}.py.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..continual.dsc import dsc_loss
from ..continual.ewc import FlatAnchor, parameter_keys
from ..continual.pool import ConceptPool, check_trained_against
from ..continual.scores import repeat_for_concepts, sample_past
from ...lora.adapter import LoraAdapter
from ..objective import Coefficients
from . import ExtraExamples, Regularizer, StepContext, TrainingSetup, register
from .knobs import MethodConfig, configured, knob


@dataclass(frozen=True)
class ContinualConfig(MethodConfig):
    """Continual personalization (Jha et al., "Mining your own secrets", ICLR 2025, §3.2-3.3). The concept pool,
    the past concepts' encoded prompts and the teacher LoRA are data, given to the class beside its config.

    ewc_weight: λ of the EWC penalty (λ/2)·Σ_i F_i·(θ_i − θ*_i)², with the pool's Fisher (normalized to sum 1 per
        concept, so λ does not depend on the model size); 0 turns it off; sequential-LoRA pools have none.
    distill: run diffusion-score consolidation (DSC, §3.3): train on L_DSC, distilled from the teacher (the LoRA just
        trained on this concept) and a random past concept's LoRA, instead of the denoising loss.
    score_weight: w_s, the weight of L_DSC's DC-score cross-entropy to both teachers (distill only).
    noise_weight: w_ε, the weight of L_DSC's noise-prediction MSE to each teacher on its concept (distill only).
    concepts_per_score: k, how many past concepts (drawn anew each time) a DC score compares beside c_0 and the
        current concept; a score costs k + 2 predictions (the paper found k = 5 of 6 best).
    """

    method: ClassVar[str] = "continual regularizer"

    ewc_weight: float = knob(1000.0, "λ of the EWC penalty (the pool's Fisher sums to 1 per concept, so λ does not "
                             "depend on the model size). Larger keeps past concepts better and learns the new one less; "
                             "0 = off. Ignored for sequential-LoRA pools.", min=0.0, max=1e12, step=100.0)
    distill: bool = knob(False, "Diffusion-score consolidation (DSC): run this training as the consolidation of the "
                         "concept just trained (connect its LoRA as the teacher). Needs a non-empty pool.")
    score_weight: float = knob(1.0, "distill only: weight of the DC-score distillation (cross-entropy to both teachers' "
                               "scores).", min=0.0, max=1e6, step=0.1)
    noise_weight: float = knob(1.0, "distill only: weight of the noise-prediction distillation (MSE to each teacher on "
                               "its concept).", min=0.0, max=1e6, step=0.1)
    concepts_per_score: int = knob(5, "k: how many past concepts (sampled anew each time) enter a DC score beside c_0 "
                                   "and the current concept. More is a better classifier and costs k + 2 forwards per "
                                   "score; the paper found k = 5 of 6 best.", min=1, max=1000)


@register
class Continual(Regularizer):
    name = "continual"

    def __init__(self, pool: ConceptPool, concept_conditionings: list, pretrained_conditioning,
                 config: ContinualConfig | None = None, *, teacher: dict | None = None, **overrides):
        """`overrides` replace settings of `config` (default: the node's), e.g. `ewc_weight=0.0`."""
        if len(concept_conditionings) != len(pool):
            raise ValueError(f"{len(concept_conditionings)} encoded concept prompts for a pool of {len(pool)} concepts")
        self.config = c = configured(ContinualConfig, config, overrides)
        self.pool, self.concept_conditionings, self.pretrained_conditioning = pool, list(concept_conditionings), pretrained_conditioning
        self.ewc_weight, self.distill = c.ewc_weight, c.distill
        self.score_weight, self.noise_weight, self.k = c.score_weight, c.noise_weight, c.concepts_per_score
        self.teacher = teacher
        if self.distill:
            if not pool.concepts:
                raise ValueError("diffusion-score consolidation distils from a past concept's LoRA, and the pool is empty: "
                                 "turn distill off for the first concept")
            if teacher is None:
                raise ValueError("distill is on: connect the LoRA just trained on this concept as the teacher")
            pool.check_lora(teacher, "the teacher LoRA")
            check_trained_against(pool, getattr(teacher, "metadata", None))
        self.replaces_denoising_loss = self.distill
        self.setup: TrainingSetup | None = None
        self.anchor: FlatAnchor | None = None
        self._inputs: dict = {}
        self._pending = None
        self._loaded_past = None

    @property
    def penalized(self) -> bool:
        return self.pool.fisher_source is not None and bool(self.pool.concepts) and self.ewc_weight > 0

    def settings(self) -> dict:
        out = {"method": self.pool.method, "pool_concepts": self.pool.triggers, "ewc_weight": self.ewc_weight,
               "distill": self.distill}
        if self.distill:
            out.update({"score_weight": self.score_weight, "noise_weight": self.noise_weight,
                        "concepts_per_score": self.k, "score_temperature": self.pool.temperature})
        return out

    # ---- set-up -------------------------------------------------------------------------------
    def initial_lora(self, config, base_fingerprint: str):
        self.pool.check_base(base_fingerprint, "the model being trained")
        if self.distill:
            return {k: v for k, v in self.teacher.items()}  # the student starts as teacher 1
        return self.pool.latest.lora if self.pool.concepts else None

    def extra_adapters(self, diffusion_model) -> list:
        if not self.distill:
            return []
        self.teacher_current = LoraAdapter.from_state_dict(diffusion_model, self.teacher)
        self.teacher_past = LoraAdapter.from_state_dict(diffusion_model, self.pool.concepts[0].lora)
        for adapter in (self.teacher_current, self.teacher_past):
            adapter.strength = 0.0
            adapter.requires_grad_(False)
        return [self.teacher_current, self.teacher_past]

    def prepare(self, setup: TrainingSetup) -> None:
        self.setup, self._inputs, self._pending, self._loaded_past = setup, {}, None, None
        self.anchor = None
        if self.penalized:
            keys, _ = parameter_keys(setup.adapter)
            latest = self.pool.latest
            self.anchor = FlatAnchor([latest.lora[k] for k in keys], [latest.fisher[k] for k in keys], setup.device)

    def _concept_inputs(self, x0: torch.Tensor) -> tuple[dict, list[dict]]:
        """Model inputs of c_0 and of every past concept's prompt, for latents of x0's size (cached)."""
        shape = tuple(x0.shape[1:])
        if shape not in self._inputs:
            latent = x0[:1].detach()
            self._inputs[shape] = (self.setup.encode(self.pretrained_conditioning, latent),
                                   [self.setup.encode(c, latent) for c in self.concept_conditionings])
        return self._inputs[shape]

    # ---- DSC: the student's forwards join the trainer's ---------------------------------------
    def examples_on_batch(self, x0, noise, u, caption_inputs) -> ExtraExamples | None:
        if not self.distill:
            return None
        generator = self.setup.generator
        past_count = len(self.pool)
        j = int(torch.randint(past_count, (1,), generator=generator))
        subset = sample_past(past_count, self.k, generator, include=j)
        pretrained, past = self._concept_inputs(x0)
        concepts = [pretrained, *(past[i] for i in subset), caption_inputs]
        xs, inputs = repeat_for_concepts(x0, concepts)
        k = len(concepts)
        examples = ExtraExamples(xs, noise.repeat(k, *([1] * (noise.ndim - 1))), u.repeat(k), inputs)
        self._pending = (examples, j, 1 + subset.index(j), k)
        return examples

    def _teachers(self, ctx: StepContext, inputs: dict, j: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher 1 and teacher 2 over the same concepts and x_t, in one no-grad forward."""
        if self._loaded_past != j:
            self.teacher_past.load_lora_state_dict(self.pool.concepts[j].lora)
            self._loaded_past = j
        b = ctx.x0.shape[0]
        xs = ctx.x_t.repeat(2 * k, *([1] * (ctx.x_t.ndim - 1)))
        sigma = ctx.sigma.repeat(2 * k)
        both = {n: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for n, v in inputs.items()}
        first = torch.cat([torch.ones(k * b), torch.zeros(k * b)]).to(xs.device)
        previous = ctx.adapter.strength
        ctx.adapter.strength, self.teacher_current.strength, self.teacher_past.strength = 0.0, first, 1 - first
        try:
            with torch.no_grad():
                out = self.setup.predict(xs, sigma, both, Coefficients.of(self.setup.model_sampling, sigma), "teacher")
        finally:
            ctx.adapter.strength, self.teacher_current.strength, self.teacher_past.strength = previous, 0.0, 0.0
        shape = (k, b, *ctx.x_t.shape[1:])
        return out[: k * b].view(shape), out[k * b:].view(shape)

    # ---- the loss -----------------------------------------------------------------------------
    def loss(self, ctx: StepContext) -> torch.Tensor:
        total = ctx.x0.new_zeros((), dtype=torch.float32)
        if self.anchor is not None:
            _, params = parameter_keys(ctx.adapter)
            total = total + self.anchor.penalty(params, self.ewc_weight)
        if self.distill:
            examples, j, j_position, k = self._pending
            self._pending = None
            b = ctx.x0.shape[0]
            student = examples.prediction.view(k, b, *ctx.x_t.shape[1:])
            current, past = self._teachers(ctx, examples.inputs, j, k)
            total = total + dsc_loss(student, current, past, ctx.target, current=k - 1, past=j_position,
                                     temperature=self.pool.temperature, score_weight=self.score_weight,
                                     noise_weight=self.noise_weight)
        return total
