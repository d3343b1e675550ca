"""Drift regularizers: each adds a term to the training loss, written against `StepContext`.

A regularizer is a small object with a `name`, its `settings()` (recorded in the LoRA file), whether it
needs the frozen base model's prediction, and `loss(ctx) -> scalar tensor`; `Regularizer` below lists every
other hook and which methods use it. Several can be chained;
their terms add. The frozen prediction is computed at most once per step, on the same loaded weights
with the LoRA at strength 0 (a bit-exact base-model forward), and shared by all of them. A regularizer
that needs its own data (class images) gets the run's `TrainingSetup` once, in `prepare`, and keeps
its resumable state in `state_dict`.

Registry: `REGULARIZERS[name]` is the class; each lives in its own module of this package.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch


# transformer_options key naming the forward that runs ("train" or "frozen"), for patches that watch a pass
PASS_KEY = "driftless_pass"


@dataclass
class TrainingSetup:
    """What a regularizer may use beyond one micro-batch: the run's model seam and its randomness."""

    predict: Callable  # (x_t, sigma, inputs, coefficients, pass_name="train") -> raw output F, with grad through the LoRA
    encode: Callable  # (CONDITIONING, latent [1,C,h,w]) -> apply_model inputs
    prepare_latents: Callable  # LATENT samples -> model-space latents on the training device
    model_sampling: object
    generator: torch.Generator
    device: torch.device
    config: object  # TrainConfig
    adapter: object = None  # the LoraAdapter being trained
    base_fingerprint: str = ""  # lora/fingerprint.py of the base model


@dataclass
class StepContext:
    """One micro-batch as the trainer saw it, in the model's native parameterization."""

    x0: torch.Tensor  # model-space latents (after process_latent_in and any augmentation)
    u: torch.Tensor  # noise level of each sample in [0, 1] (0 = clean end of the schedule)
    noise: torch.Tensor
    sigma: torch.Tensor
    x_t: torch.Tensor
    inputs: dict  # apply_model inputs of this micro-batch (c_crossattn, and y for SDXL)
    prediction: torch.Tensor  # the LoRA model's raw output F
    target: torch.Tensor  # F* (ε for ε-models)
    weight: torch.Tensor  # per-sample weight of the denoising loss, [B]: min-SNR-γ (ones when off) × APT's 1 − γ
    denoising_loss: torch.Tensor  # the (weighted) denoising term of this micro-batch
    adapter: object  # the LoraAdapter being trained
    step: int
    setup: TrainingSetup | None = None
    frozen: torch.Tensor | None = field(default=None, repr=False)  # the step's one frozen forward, when one ran
    caption_inputs: dict | None = None  # the micro-batch's own captions, before null-prompt dropout

    @property
    def frozen_prediction(self) -> torch.Tensor:
        """The base model's raw output on the same x_t, σ and text (no grad), from the step's frozen forward."""
        if self.frozen is None:
            raise RuntimeError("no frozen-model forward in this step: a regularizer that reads it sets needs_frozen_prediction = True")
        return self.frozen


@dataclass
class ExtraExamples:
    """Examples a regularizer adds to the trained forward, so both go through one batched forward.

    The regularizer fills x0, noise, u and inputs; the trainer fills prediction, target and weight
    (min-SNR) from that forward before calling `loss`.
    """

    x0: torch.Tensor
    noise: torch.Tensor
    u: torch.Tensor
    inputs: dict
    prediction: torch.Tensor | None = None
    target: torch.Tensor | None = None
    weight: torch.Tensor | None = None


class Regularizer(ABC):
    """A drift regularizer: a term added to the training loss, plus whichever hooks into the run it needs.

    To add a method: a module in this package with its config, a frozen dataclass `<Method>Config(MethodConfig)`
    whose fields are `knob(default, help, min=, max=, step=)` and whose docstring cites the paper and explains every
    field (knobs.py); a subclass decorated with `@register` that sets `name`, takes `(config=None, **overrides)` and
    keeps `self.config = configured(<Method>Config, config, overrides)`, implements `loss` and `settings`, and overrides
    only the hooks below that it needs; a node in nodes/regularizers.py whose inputs are `knob_inputs(<Method>Config)`
    (nodes/knobs.py); and a row in CASES of tests/comfy/test_regularizer_properties.py (weight 0 equals plain
    training, exact resume, every model family; the node shows the config).

    The trainer (trainers/loop.py) calls, per run: `prepare` once; `initial_lora` and `extra_adapters` while it
    builds the LoRA; `transformer_patches` once; `state_dict`/`load_state_dict` with checkpoints. Per micro-batch:
    `augment`, `extra_examples` and `examples_on_batch` before the forward; `begin_pass`/`end_pass` around each
    forward; `denoising_weight` and `loss` after it. Per optimizer step: `add_parameter_gradients` after backward.

    | hook / flag                         | used by                                  |
    |-------------------------------------|------------------------------------------|
    | loss, settings                      | every method                             |
    | needs_frozen_prediction             | DCO, APT                                 |
    | replaces_denoising_loss             | DCO (mode replace), continual (distill)  |
    | prepare                             | APT, prior preservation, continual       |
    | state_dict, load_state_dict         | APT (indicator EMAs), prior preservation |
    | augment, denoising_weight           | APT (adaptive adjustment)                |
    | transformer_patches, begin/end_pass | APT (representation and attention terms) |
    | extra_examples                      | prior preservation                       |
    | examples_on_batch                   | continual (DSC)                          |
    | initial_lora, extra_adapters        | continual                                |
    | add_parameter_gradients             | parameter anchor                         |
    | log_values                          | APT (γ per timestep bin)                 |
    """

    name = "base"
    needs_frozen_prediction = False  # True: the step runs the shared frozen forward (LoRA at strength 0) first
    replaces_denoising_loss = False  # True: the trainer drops its own denoising term (DCO's paper form, DSC)

    def settings(self) -> dict:
        """The method's settings as recorded in the LoRA file's metadata and checked on resume."""
        return {}

    def prepare(self, setup: TrainingSetup) -> None:
        """Called once per run before the first step, with the run's model seam and generator. Used by APT,
        prior preservation (encodes its class images) and continual (its EWC anchor; keeps the seam to encode its
        concept prompts)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Resumable state saved with each checkpoint (APT's indicator, prior preservation's data order and the
        generator of its class draws)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict` on resume, after `prepare`."""

    # hooks into the step, for methods that shape the batch or watch the forwards
    def augment(self, x0: torch.Tensor, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Transform the clean latents before noising (default: unchanged). APT's adaptive augmentation."""
        return x0

    def denoising_weight(self, u: torch.Tensor) -> torch.Tensor:
        """Per-sample multiplier of the denoising loss (default: ones). APT's (1 − γ)."""
        return torch.ones_like(u)

    def extra_examples(self, batch_size: int, example_shape: tuple) -> ExtraExamples | None:
        """Examples to train in the same forward as the micro-batch (same latent shape), or None. Prior
        preservation's class images."""
        return None

    def examples_on_batch(self, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor, caption_inputs: dict) -> ExtraExamples | None:
        """Like `extra_examples`, built from the micro-batch itself (its latents after augmentation, noise,
        noise levels and captions): other prompts on the same x_t, in the same batched forward. Continual's DSC."""
        return None

    # hooks into the run's set-up, for methods that continue from or compare with other LoRAs
    def initial_lora(self, config, base_fingerprint: str) -> dict[str, torch.Tensor] | None:
        """LoRA weights (ComfyUI-native keys) the run starts from instead of the fresh init, or None.
        At most one regularizer of a chain may give them; a resume state overrides them. Continual."""
        return None

    def extra_adapters(self, diffusion_model) -> list:
        """LoRA adapters to install beside the trained one, at strength 0 unless the regularizer sets a
        strength for its own forwards (past LoRAs evaluated on the same loaded weights). Continual's teachers."""
        return []

    def transformer_patches(self, diffusion_model) -> dict:
        """ComfyUI transformer patches to add to the training forwards ({"patches": ..., "patches_replace": ...});
        the forward's name is in transformer_options[PASS_KEY]. APT's captures."""
        return {}

    def begin_pass(self, name: str) -> None:
        """Called before each forward: name is "train" (the LoRA model) or "frozen" (the base model). APT."""

    def end_pass(self, name: str) -> None:
        """Called after each forward, under the same grad mode (no grad for "frozen"). APT."""

    def add_parameter_gradients(self, adapter, scale: float = 1.0) -> None:
        """For a term of the LoRA weights alone: add `scale` × its gradient to the factors' gradients in closed
        form, once per optimizer step after the backward passes; its `loss` then returns the value without a
        graph. `scale` is the loss scale of fp16 training (1 otherwise). The parameter anchor."""

    def log_values(self) -> dict[str, torch.Tensor]:
        """Values the run's log (TensorBoard) shows after each step besides the term itself, by name: a scalar, or a
        1-D tensor shown as one value per index. APT's γ per timestep bin."""
        return {}

    @abstractmethod
    def loss(self, ctx: StepContext) -> torch.Tensor:
        """A scalar added to the step's loss (every method)."""


REGULARIZERS: dict[str, type[Regularizer]] = {}


def register(cls: type[Regularizer]) -> type[Regularizer]:
    REGULARIZERS[cls.name] = cls
    return cls


def chain(previous, regularizer: Regularizer) -> list[Regularizer]:
    """The list a regularizer node outputs: what came in, plus this one."""
    return [*(previous or []), regularizer]


# importing the method modules fills the registry (they import the names defined above)
from . import apt, continual, dco, parameter_anchor, prior_preservation  # noqa: E402,F401
