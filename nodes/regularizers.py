"""Drift-regularizer nodes: each configures one regularizer and appends it to the chain it receives.

The chain (DRIFTLESS_REGULARIZER) plugs into Driftless Train LoRA's `regularizer` input; chained terms
add. The math lives in trainers/regularizers/, one file per method.
"""

from comfy_api.latest import io

from ..trainers.regularizers import apt, dco, parameter_anchor, prior_preservation
from .knobs import knob_inputs
from .train_lora import REGULARIZER
from .validation import CheckedNode


def _chain_input():
    return REGULARIZER.Input("chain", optional=True, tooltip="Regularizers configured upstream; this one is added to them.")


def _output():
    return REGULARIZER.Output(display_name="regularizer", tooltip="Connect to Train LoRA's regularizer input, or chain on.")


class ParameterAnchor(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessParameterAnchor",
            display_name="Driftless Parameter Anchor (Preserve & Personalize)",
            category="Driftless/train/regularizers",
            description=(
                "Keeps the personalized weights close to the base weights: adds λ·Σ‖ΔW‖² over the LoRA's weight "
                "changes (Kim et al., 'Preserve & Personalize', ICLR 2026). No extra forward pass and no class "
                "images: the cheapest way to limit drift. Larger λ: less drift, weaker subject."
            ),
            inputs=[
                *knob_inputs(parameter_anchor.ParameterAnchorConfig),
                _chain_input(),
            ],
            outputs=[_output()],
        )

    @classmethod
    def execute(cls, chain=None, **settings) -> io.NodeOutput:
        from ..trainers.regularizers import chain as append
        from ..trainers.regularizers.parameter_anchor import ParameterAnchor as Anchor, ParameterAnchorConfig

        return io.NodeOutput(append(chain, Anchor(ParameterAnchorConfig(**settings))))


class DCO(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessDCO",
            display_name="Driftless DCO (Direct Consistency Optimization)",
            category="Driftless/train/regularizers",
            description=(
                "Trains the LoRA to beat the base model on the subject by a margin, not without bound: "
                "−log σ(−β(‖ε−ε_θ‖² − ‖ε−ε_base‖²)) (Lee et al. 2024). Costs one extra no-grad forward of the "
                "base model per step (shared with other regularizers that need it)."
            ),
            inputs=[
                *knob_inputs(dco.DCOConfig),
                _chain_input(),
            ],
            outputs=[_output()],
        )

    @classmethod
    def execute(cls, chain=None, **settings) -> io.NodeOutput:
        from ..trainers.regularizers import chain as append
        from ..trainers.regularizers.dco import DCO as Dco, DCOConfig

        return io.NodeOutput(append(chain, Dco(DCOConfig(**settings))))


class PriorPreservation(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessPriorPreservation",
            display_name="Driftless Prior Preservation (DreamBooth)",
            category="Driftless/train/regularizers",
            description=(
                "DreamBooth's prior-preservation loss: every step also trains on images of the subject's class "
                "(e.g. 'a photo of a dog') so the class does not collapse onto your subject. Use images the base "
                "model drew (Driftless Class Images) or your own. Costs one extra forward and backward per step."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model being trained; encodes the class prompt."),
                io.String.Input("class_prompt", default="a photo of a dog",
                                tooltip="The class without the identifier: 'a photo of a dog' for 'a photo of sks dog'."),
                *knob_inputs(prior_preservation.PriorPreservationConfig),
                io.Image.Input("class_images", optional=True, tooltip="Class images (needs the VAE)."),
                io.Vae.Input("vae", optional=True, tooltip="Encodes the class images; the model's own VAE."),
                io.Latent.Input("class_latents", optional=True, tooltip="Class images already encoded (from Class Images)."),
                _chain_input(),
            ],
            outputs=[_output()],
        )

    @classmethod
    def execute(cls, clip, class_prompt, weight, class_images=None, vae=None, class_latents=None, chain=None):
        from ..trainers.regularizers import chain as append
        from ..trainers.regularizers.prior_preservation import PriorPreservation as Prior, PriorPreservationConfig

        if class_latents is not None:
            latents = class_latents["samples"]
        elif class_images is not None and vae is not None:
            latents = vae.encode(class_images[:, :, :, :3])
        else:
            raise ValueError("prior preservation needs class images and a VAE, or class latents")
        if not class_prompt.strip():
            raise ValueError("the class prompt is empty: name the subject's class, e.g. 'a photo of a dog'")
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(class_prompt))
        return io.NodeOutput(append(chain, Prior(latents.clone(), conditioning, class_prompt, PriorPreservationConfig(weight=weight))))


class APT(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessAPT",
            display_name="Driftless APT (Adaptive Personalized Training)",
            category="Driftless/train/regularizers",
            description=(
                "APT (Chae et al., CVPR 2025): watches, per timestep bin, how far the LoRA's loss has fallen below the "
                "base model's (an overfitting indicator γ); where it overfits, augments more and down-weights the "
                "loss, and keeps self-attention feature statistics and cross-attention maps close to the base "
                "model's (on SD3 and Flux: each block's image tokens and the image-to-text part of each joint "
                "attention). Costs one no-grad base forward (shared) plus the attention maps."
            ),
            inputs=[
                *knob_inputs(apt.APTConfig),
                _chain_input(),
            ],
            outputs=[_output()],
        )

    @classmethod
    def execute(cls, chain=None, **settings) -> io.NodeOutput:
        from ..trainers.regularizers import chain as append
        from ..trainers.regularizers.apt import APT as Apt, APTConfig

        return io.NodeOutput(append(chain, Apt(APTConfig(**settings))))


class ClassImages(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="DriftlessClassImages",
            display_name="Driftless Class Images",
            category="Driftless/train/regularizers",
            description=(
                "Samples class images for prior preservation with the base model itself. Seeded and cached on disk "
                "(keyed by the model's fingerprint, prompt, seed and settings), so a rerun loads them instead of "
                "sampling again."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model (before training)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE, to decode the images for display."),
                io.String.Input("class_prompt", default="a photo of a dog", tooltip="The class, without the identifier."),
                io.Int.Input("count", default=50, min=1, max=10000,
                             tooltip="How many images; DreamBooth used ~200 per subject, diffusers defaults to 100."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Images are sampled in chunks of 4 with seed, seed+1, ..."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Image width (SDXL: 1024)."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Image height (SDXL: 1024)."),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.1, tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule."),
            ],
            outputs=[
                io.Image.Output(display_name="class_images", tooltip="The class images, decoded."),
                io.Latent.Output(display_name="class_latents", tooltip="The same images as latents (no re-encoding needed)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, class_prompt, count, seed, width, height, steps, cfg, sampler_name, scheduler):
        import pathlib

        import folder_paths

        from ..trainers.class_images import generate_class_latents
        from ..lora.fingerprint import patcher_fingerprint

        encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
        cache = pathlib.Path(folder_paths.models_dir) / "driftless" / "class_images"
        latents, cached = generate_class_latents(
            model, encode(class_prompt), encode(""), count=count, seed=seed, width=width, height=height, steps=steps,
            cfg=cfg, sampler=sampler_name, scheduler=scheduler, cache_folder=cache,
            base_fingerprint=patcher_fingerprint(model), prompt=class_prompt,
        )
        return io.NodeOutput(vae.decode(latents), {"samples": latents})
