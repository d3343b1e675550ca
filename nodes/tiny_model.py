"""Driftless Tiny Model: a seeded random-init SD1.5-, SDXL-, SD3.5- or Flux-shaped MODEL, CLIP and VAE for demos and tests."""

from comfy_api.latest import io

from ..tinymodels.configs import CONFIGS
from .validation import CheckedNode


class TinyModel(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessTinyModel",
            display_name="Driftless Tiny Model (demo, random weights)",
            category="Driftless/demo",
            description=(
                "Builds a small random-initialised model with ComfyUI's own SD1.5, SDXL, SD3 or Flux classes "
                "(same diffusion-model code, latent format, noise schedule, tokenizers and conditioning path as a "
                "real checkpoint), so a workflow can be tried or tested in seconds on a CPU with no weights. "
                "It draws noise, not pictures: swap it for Load Checkpoint to work on a real model."
            ),
            inputs=[
                io.Combo.Input(
                    "architecture",
                    options=list(CONFIGS),
                    default="sd15-tiny",
                    tooltip=(
                        "sd15-tiny: SD1.5-shaped (one text encoder, 3 UNet levels). "
                        "sdxl-tiny: SDXL-shaped (CLIP-L + CLIP-G, pooled embedding and size conditioning). "
                        "sd15-bench / sdxl-bench: the larger SD1.5- and SDXL-shaped sizes the speed benchmarks use. "
                        "sd35-tiny: SD3.5-shaped MMDiT (CLIP-L + CLIP-G + T5, two joint blocks, the first with "
                        "SD3.5 Medium's second self-attention; 16-channel latents, use an SD3 empty latent). "
                        "flux-dev-tiny: Flux.1 [dev]-shaped (CLIP-L + T5, double- and single-stream blocks, a "
                        "guidance embedding: set it with FluxGuidance, sample at CFG 1). flux-tiny: the same without "
                        "the guidance embedding (an undistilled Flux, sampled with real CFG). "
                        "sd35-bench / flux-dev-bench: the speed benchmarks' DiT sizes. "
                        "drift-bench: the drift benchmark's 32x32 model with a 4x VAE, untrained here "
                        "(Driftless Pretrained Shapes Model loads it pretrained)."
                    ),
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    tooltip="Seed of the random weights: the same seed gives the same model on every machine.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The diffusion model, as Load Checkpoint returns it."),
                io.Clip.Output(display_name="CLIP", tooltip="The text encoder(s) with the real tokenizer."),
                io.Vae.Output(display_name="VAE", tooltip="An 8x-downscaling AutoencoderKL: 4 latent channels (SD1.5, SDXL) or 16 (SD3.5, Flux)."),
            ],
        )

    @classmethod
    def execute(cls, architecture: str, seed: int) -> io.NodeOutput:
        from ..tinymodels.build import build_tiny_model

        return io.NodeOutput(*build_tiny_model(architecture, seed))
