"""Prior preservation (DreamBooth, Ruiz et al., CVPR 2023, eq. 2).

    L = E‖F* − F_θ(x_t, c_inst)‖²  +  λ_prior · E‖F*' − F_θ(x'_t', c_cls)‖²

x' are images of the subject's class ("a dog") drawn by the base model itself, or given; c_cls is the
class prompt without the identifier. Training on them keeps the class prior from collapsing onto the
subject ("language drift"). Each step draws its own class micro-batch (same batch size, its own noise
and timesteps) from a generator of its own, seeded from the run's seed (+ CLASS_SEED_OFFSET): the subject's
draws are the same as in plain training, whatever the weight. When the class latents have the training
latents' size, the class micro-batch joins the training micro-batch in one batched forward, as DreamBooth's
scripts do; otherwise it gets its own forward. At weight 0 nothing is drawn or computed.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..data import IndexStream
from ..objective import Coefficients, denoising_loss, min_snr_weight, sample_sigmas
from . import ExtraExamples, Regularizer, StepContext, TrainingSetup, register
from .knobs import MethodConfig, configured, knob

CLASS_SEED_OFFSET = 1_000_003  # the class draws' generator: the run's seed plus this


@dataclass(frozen=True)
class PriorPreservationConfig(MethodConfig):
    """Prior preservation (DreamBooth, Ruiz et al., CVPR 2023, eq. 2). The class images and prompt are data, given
    to the class beside its config.

    weight: λ_prior, the weight of the class images' denoising loss against the subject's; DreamBooth uses 1.
        0 draws and computes nothing (plain training).
    """

    method: ClassVar[str] = "prior preservation"

    weight: float = knob(1.0, "λ_prior; DreamBooth uses 1.", min=0.0, max=100.0, step=0.05)


@register
class PriorPreservation(Regularizer):
    name = "prior_preservation"

    def __init__(self, class_latents: torch.Tensor, class_conditioning, class_prompt: str,
                 config: PriorPreservationConfig | None = None, **overrides):
        if class_latents.ndim != 4 or class_latents.shape[0] == 0:
            raise ValueError("prior preservation needs at least one class image")
        self.config = configured(PriorPreservationConfig, config, overrides)
        self.class_latents, self.class_conditioning = class_latents, class_conditioning
        self.class_prompt, self.weight = class_prompt, self.config.weight
        self.setup: TrainingSetup | None = None
        self._pending: ExtraExamples | None = None

    def settings(self) -> dict:
        return {**self.config.as_dict(), "class_prompt": self.class_prompt, "class_images": int(self.class_latents.shape[0])}

    def prepare(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.x0 = setup.prepare_latents(self.class_latents)
        self.inputs = setup.encode(self.class_conditioning, self.x0[:1])
        self.generator = torch.Generator().manual_seed(setup.config.seed + CLASS_SEED_OFFSET)
        self.stream = IndexStream(self.x0.shape[0], self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.stream.state(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stream.load_state(state)
        self.generator.set_state(state["generator"])

    def _draw(self, b: int) -> ExtraExamples:
        setup, config = self.setup, self.setup.config
        index = self.stream.take(b).to(setup.device)
        x0 = self.x0[index]
        noise = torch.randn(x0.shape, generator=self.generator).to(setup.device)
        u = config.timestep_min + (config.timestep_max - config.timestep_min) * torch.rand(b, generator=self.generator)
        inputs = {k: v.repeat(b, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        return ExtraExamples(x0, noise, u, inputs)

    def extra_examples(self, batch_size: int, example_shape: tuple) -> ExtraExamples | None:
        if self.weight == 0:
            return None
        if self.x0.shape[1] != example_shape[0]:
            raise ValueError(f"the class latents have {self.x0.shape[1]} channels and the training latents {example_shape[0]}: "
                             f"encode the class images with this model's VAE (or sample them with Class Images on this model)")
        if tuple(self.x0.shape[1:]) != tuple(example_shape):
            return None
        self._pending = self._draw(batch_size)
        return self._pending

    def loss(self, ctx: StepContext) -> torch.Tensor:
        examples, self._pending = self._pending, None
        if self.weight == 0:
            return ctx.denoising_loss.new_zeros(())
        if examples is None:  # another latent size: a forward of its own
            setup = self.setup
            examples = self._draw(setup.config.batch_size)
            sigma = sample_sigmas(setup.model_sampling, examples.u).to(setup.device)
            coefficients = Coefficients.of(setup.model_sampling, sigma)
            x_t = coefficients.noisy(examples.x0, examples.noise)
            examples.prediction = setup.predict(x_t, sigma, examples.inputs, coefficients)
            examples.target = coefficients.target(examples.x0, examples.noise)
            examples.weight = min_snr_weight(coefficients, setup.config.min_snr_gamma)
        return self.weight * denoising_loss(examples.prediction, examples.target, examples.weight).mean()
