"""The base MODEL with LoRA adapters on a clone of it, outside training: the Fisher pass and the report.

Past concepts' LoRAs are evaluated on the same loaded weights through the activation-space adapter
(lora/adapter.py): the input MODEL is cloned, any Driftless LoRA on it is taken off, the
adapters are attached to the clone through ComfyUI's injections, and no weight is copied or patched.
Callers run outside torch.inference_mode (nodes wrap with model_state.outside_inference_mode).
"""

import torch

from ..conditioning import model_inputs
from ...lora.adapter import INJECTION_KEY, LoraAdapter, attach
from ..model_state import release_inference_tensors
from ..objective import Coefficients, sample_sigmas


class AdaptedModel:
    def __init__(self, model_patcher, adapters: list[LoraAdapter]):
        import comfy.model_management

        self.clone = model_patcher.clone()
        self.clone.remove_injections(INJECTION_KEY)  # a MODEL from Train LoRA: evaluate the given LoRAs, not its own
        attach(self.clone, adapters)
        comfy.model_management.load_models_gpu([self.clone], force_full_load=True)
        release_inference_tensors(self.clone.model)
        self.model = self.clone.model
        self.device = self.clone.load_device
        self.model_sampling = self.clone.get_model_object("model_sampling")

    def latents(self, samples: torch.Tensor) -> torch.Tensor:
        """LATENT samples -> model-space latents on the device."""
        return self.model.process_latent_in(samples.detach().to(self.device, torch.float32).clone())

    def inputs(self, conditioning, latent: torch.Tensor) -> dict:
        return model_inputs(self.model, conditioning, latent[:1])

    def noisy(self, x0: torch.Tensor, u: torch.Tensor, noise: torch.Tensor):
        """(σ, x_t, F*) for clean latents x0, noise levels u ∈ [0, 1] and noise ε."""
        sigma = sample_sigmas(self.model_sampling, u).to(self.device)
        coefficients = Coefficients.of(self.model_sampling, sigma)
        return sigma, coefficients.noisy(x0, noise), coefficients.target(x0, noise)

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The network's raw output F (native parameterization), as the trainer computes it."""
        options = dict(self.clone.model_options.get("transformer_options", {}))
        options["sigmas"] = sigma
        options["cond_or_uncond"] = [0] * x_t.shape[0]
        denoised = self.model.apply_model(x_t, sigma, transformer_options=options, **inputs).float()
        return Coefficients.of(self.model_sampling, sigma).prediction(denoised, x_t)
