"""Driftless Pretrained Shapes Model: the pack's small pretrained text-to-image model (MODEL, CLIP, VAE), shapes/."""

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
                "Empty Latent Image of 64x64: ComfyUI sizes latents for 8x VAEs, this one is 4x). The full preset's "
                "weights ship with the pack (loaded in a second); the quick preset is pretrained once per machine "
                "into ~/.cache/driftless/shapes-<hash>/ (minutes on a CPU). It is the drift benchmark's model too."
            ),
            inputs=[
                io.Combo.Input(
                    "preset", options=list(PRESETS), default="full",
                    tooltip=("full: the shipped weights, the demo's and the benchmark's model. "
                             "quick: a shorter pretraining (rougher pictures), built on first use in minutes."),
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

        from ..shapes import weights

        bar = comfy.utils.ProgressBar(1)  # a first build shows its progress; Cancel stops it there
        folder = weights.ensure(preset, progress=lambda done, total: bar.update_absolute(done, total))
        return io.NodeOutput(*weights.load_model(folder))
