"""Driftless Tiny Model: a seeded random-init SD1.5- or SDXL-shaped MODEL, CLIP and VAE for demos and tests."""

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
                "Builds a small random-initialised model with ComfyUI's own SD1.5 or SDXL classes "
                "(same UNet code, latent format, noise schedule, tokenizer and conditioning path as a real "
                "checkpoint), so a workflow can be tried or tested in seconds on a CPU with no weights. "
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
                io.Vae.Output(display_name="VAE", tooltip="An 8x-downscaling AutoencoderKL with 4 latent channels."),
            ],
        )

    @classmethod
    def execute(cls, architecture: str, seed: int) -> io.NodeOutput:
        from ..tinymodels.build import build_tiny_model

        return io.NodeOutput(*build_tiny_model(architecture, seed))
