"""Driftless Pretrained Shapes Model: the drift benchmark's small pretrained text-to-image model (MODEL, CLIP, VAE)."""

import pathlib

from comfy_api.latest import io

from .validation import CheckedNode

PRESETS = ("full", "quick")


class PretrainedShapesModel(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessPretrainedShapesModel",
            display_name="Driftless Pretrained Shapes Model (32x32, CPU)",
            category="Driftless/demo",
            description=(
                "A small SD1.5-shaped text-to-image model pretrained by the pack's own script on generated "
                "pictures of circles, squares and triangles in red, green, blue or yellow on white, black or gray "
                "(captions like 'a red circle on a black background'). 32x32 pictures, 8x8 latents (use an "
                "Empty Latent Image of 64x64: ComfyUI sizes latents for 8x VAEs, this one is 4x). Built once per "
                "machine into ~/.cache/driftless/drift-<hash>/ (the first run trains it: minutes on a CPU), "
                "then loaded from there. It is the drift benchmark's model (bench/drift)."
            ),
            inputs=[
                io.Combo.Input(
                    "preset", options=list(PRESETS), default="full",
                    tooltip=("full: the benchmark's model (<= 20 min to build on 2 idle CPU cores, once). "
                             "quick: a quarter of the pretraining (rougher pictures), for a first look."),
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The pretrained diffusion model (SD1.5 classes, ε-prediction)."),
                io.Clip.Output(display_name="CLIP", tooltip="The CLIP tokenizer with a small text transformer."),
                io.Vae.Output(display_name="VAE", tooltip="A 4x-downscaling AutoencoderKL: 32x32 pictures, 4x8x8 latents."),
            ],
        )

    @classmethod
    def execute(cls, preset: str) -> io.NodeOutput:
        import comfy.utils

        from ..bench.drift import pretrain

        bar = comfy.utils.ProgressBar(1)  # the first run's pretraining shows its progress; Cancel stops it there
        folder = pretrain.ensure(pretrain.PRESETS[preset], progress=lambda done, total: bar.update_absolute(done, total))
        return io.NodeOutput(*cls.load(folder))

    @staticmethod
    def load(folder: pathlib.Path):
        from ..bench.drift import pretrain

        return pretrain.load_checkpoint(pathlib.Path(folder) / pretrain.CHECKPOINT)
