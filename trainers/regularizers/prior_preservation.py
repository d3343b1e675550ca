"""Prior preservation (DreamBooth, Ruiz et al., CVPR 2023, eq. 2).

    L = E‖F* − F_θ(x_t, c_inst)‖²  +  λ_prior · E‖F*' − F_θ(x'_t', c_cls)‖²

x' are images of the subject's class ("a dog") drawn by the base model itself, or given; c_cls is the
class prompt without the identifier. Training on them keeps the class prior from collapsing onto the
subject ("language drift"). Each step draws its own class micro-batch (same batch size, its own noise
and timesteps from the run's generator), so it costs one extra forward and backward.
"""

import torch

from ..data import IndexStream
from ..objective import Coefficients, denoising_loss, min_snr_weight, sample_sigmas
from . import Regularizer, StepContext, TrainingSetup, register


@register
class PriorPreservation(Regularizer):
    name = "prior_preservation"

    def __init__(self, class_latents: torch.Tensor, class_conditioning, class_prompt: str, weight: float = 1.0):
        if class_latents.ndim != 4 or class_latents.shape[0] == 0:
            raise ValueError("prior preservation needs at least one class image")
        if weight < 0:
            raise ValueError(f"prior preservation weight must be >= 0, got {weight}")
        self.class_latents, self.class_conditioning = class_latents, class_conditioning
        self.class_prompt, self.weight = class_prompt, float(weight)
        self.setup: TrainingSetup | None = None

    def settings(self) -> dict:
        return {"weight": self.weight, "class_prompt": self.class_prompt, "class_images": int(self.class_latents.shape[0])}

    def prepare(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.x0 = setup.prepare_latents(self.class_latents)
        self.inputs = setup.encode(self.class_conditioning, self.x0[:1])
        self.stream = IndexStream(self.x0.shape[0], setup.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.stream.state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stream.load_state(state)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        setup, config = self.setup, self.setup.config
        b = config.batch_size
        index = self.stream.take(b).to(setup.device)
        x0 = self.x0[index]
        noise = torch.randn(x0.shape, generator=setup.generator).to(setup.device)
        u = config.timestep_min + (config.timestep_max - config.timestep_min) * torch.rand(b, generator=setup.generator)
        sigma = sample_sigmas(setup.model_sampling, u).to(setup.device)
        coefficients = Coefficients.of(setup.model_sampling, sigma)
        x_t = coefficients.noisy(x0, noise)
        inputs = {k: v.repeat(b, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        prediction = setup.predict(x_t, sigma, inputs, coefficients)
        weight = min_snr_weight(coefficients, config.min_snr_gamma)
        return self.weight * denoising_loss(prediction, coefficients.target(x0, noise), weight).mean()
