"""Build the tiny models with ComfyUI's own classes (the seam to comfy.supported_models, comfy.sd).

What the stock checkpoint loader does with a real file (comfy.sd.load_state_dict_guess_config) is
done here from a config: the supported-model class picks model type, latent format and sampling
schedule; `get_model` builds the UNet; the text encoders are ComfyUI's CLIP classes with their json
config overridden through ``model_options["clip_<name>_model_config"]``; the VAE is ComfyUI's
AutoencoderKL. Weights are drawn from a seeded generator, so the same (name, seed) always gives the
same model on every machine.
"""

import functools
import math

import torch

from ..comfy_host import eager_weights, model_patcher_class
from .configs import CONFIGS, TinyDiTConfig, TinyModelConfig


def init_weights_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Variance-preserving random init: N(0, 1/fan_in) for matrices and kernels, norms at 1, biases at 0.

    ComfyUI builds modules with `comfy.ops.disable_weight_init`, which leaves parameters
    uninitialised, so every parameter is written here, in a fixed order.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def supported_model_class(cfg: TinyModelConfig | TinyDiTConfig):
    """The comfy.supported_models class a checkpoint of `cfg`'s shape is detected as."""
    import comfy.supported_models as sm

    if cfg.family == "flux":
        return sm.Flux if cfg.guidance_embed else sm.FluxSchnell
    return {"sd15": sm.SD15, "sdxl": sm.SDXL, "sd3": sm.SD3}[cfg.family]


def _supported_model(cfg: TinyModelConfig | TinyDiTConfig):
    from ..comfy_host import flux_unet_config

    unet_config = cfg.unet_config()
    model_config = supported_model_class(cfg)(flux_unet_config(unet_config) if cfg.family == "flux" else unet_config)
    if isinstance(cfg, TinyModelConfig):
        # the class's own head settings are for full-width models; a tiny width needs its own
        model_config.unet_config["num_heads"] = -1
        model_config.unet_config["num_head_channels"] = cfg.head_channels
    return model_config


def _clip_target(cfg: TinyModelConfig | TinyDiTConfig, model_config):
    """The family's text encoders. SD3's class picks its encoders from the checkpoint's keys; all three here."""
    if cfg.family != "sd3":
        return model_config.clip_target()
    import comfy.supported_models_base
    import comfy.text_encoders.sd3_clip as sd3_clip

    model = sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True, dtype_t5=torch.float32)
    return comfy.supported_models_base.ClipTarget(sd3_clip.SD3Tokenizer, model)


@eager_weights()  # built from a config: weights allocated now even with dynamic VRAM on
def build_unet(cfg: TinyModelConfig | TinyDiTConfig, seed: int, disable_dynamic: bool = False,
               weight_dtype: torch.dtype | None = None):
    """A ModelPatcher around a random-init diffusion model of `cfg`, as CheckpointLoaderSimple would return it:
    the class the stock loaders use (a plain ModelPatcher with `disable_dynamic`), and, as they do, how to build
    it again (`cached_patcher_init`, which ComfyUI 0.33's deep clones call: its own TrainLoraNode, multi-GPU).

    `weight_dtype` (torch.float8_e4m3fn, torch.bfloat16, …) stores the same weights in that dtype, as UNETLoader's
    weight_dtype (model_options["dtype"]) has comfy.sd.load_diffusion_model_state_dict load a file: the compute
    dtype from `comfy.model_management.unet_manual_cast` for the load device (float32 on a CPU), hence
    `comfy.ops.manual_cast` layers that cast each weight when they run, and the fp32 weights copied into the
    model by `load_model_weights` (each rounded to the stored dtype)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = _supported_model(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=mm.unet_offload_device())
    init_weights_(model.diffusion_model, torch.Generator().manual_seed(seed))
    if cfg.family == "sd3":
        _fill_position_embedding_(model.diffusion_model)
    _check_finite(model.diffusion_model)
    if weight_dtype is not None and weight_dtype != torch.float32:
        model = _stored_as(cfg, model, weight_dtype)
    model.diffusion_model.eval()
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else model_patcher_class()
    patcher = patcher_class(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    patcher.cached_patcher_init = ((build_unet, (cfg, seed)) if weight_dtype is None
                                   else (functools.partial(build_unet, weight_dtype=weight_dtype), (cfg, seed)))
    return patcher


def _stored_as(cfg: TinyModelConfig | TinyDiTConfig, reference, weight_dtype: torch.dtype):
    """The diffusion model of `reference` (fp32) rebuilt the way comfy.sd.load_diffusion_model_state_dict builds
    one for model_options["dtype"] = weight_dtype, and its weights loaded into it by the same call."""
    import comfy.model_management as mm

    model_config = _supported_model(cfg)
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(weight_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(weight_dtype, manual_cast)
    model = model_config.get_model({}, device=mm.unet_offload_device())
    model.load_model_weights(dict(reference.diffusion_model.state_dict()), "")
    return model


def _fill_position_embedding_(mmdit: torch.nn.Module) -> None:
    """SD3 keeps its patch position table as a buffer that ComfyUI allocates empty and checkpoints fill: the fixed
    2-D sine-cosine embedding (as in DiT, Peebles & Xie 2023) over its pos_embed_max_size² grid."""
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    table = mmdit.pos_embed
    grid = round(table.shape[1] ** 0.5)
    table.copy_(torch.from_numpy(get_2d_sincos_pos_embed(table.shape[2], grid)).to(table.dtype).unsqueeze(0))


def _check_finite(module: torch.nn.Module) -> None:
    """Every weight and buffer was written: a tensor left as allocated could hold anything."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"tiny model tensor {name} was left uninitialised")


@eager_weights()
def build_clip(cfg: TinyModelConfig | TinyDiTConfig, seed: int):
    """A comfy.sd.CLIP with the family's real tokenizer(s) and tiny random text transformers."""
    import comfy.sd

    model_config = _supported_model(cfg)
    model_options = {f"{_option_name(name)}_model_config": te.as_comfy_overrides() for name, te in cfg.text_encoders.items()}
    model_options["dtype"] = torch.float32
    clip = comfy.sd.CLIP(target=_clip_target(cfg, model_config), model_options=model_options)
    init_weights_(clip.cond_stage_model, torch.Generator().manual_seed(seed + 1))
    _check_finite(clip.cond_stage_model)
    return clip


def _option_name(text_encoder: str) -> str:
    """ComfyUI's model_options prefix for a text encoder's config overrides (clip_l, clip_g, t5xxl)."""
    return text_encoder if text_encoder == "t5xxl" else f"clip_{text_encoder}"


@eager_weights()
def build_vae(cfg: TinyModelConfig | TinyDiTConfig, seed: int):
    """A comfy.sd.VAE (AutoencoderKL, 8x downscale, 4 or 16 latent channels) with random weights."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {"params": {"ddconfig": cfg.vae_ddconfig(), "embed_dim": cfg.latent_channels}}
    reference = AutoencoderKL(**config["params"])
    init_weights_(reference, torch.Generator().manual_seed(seed + 2))
    vae = comfy.sd.VAE(sd=reference.state_dict(), config=config, dtype=torch.float32)
    vae.downscale_ratio = vae.upscale_ratio = cfg.vae_downscale  # comfy.sd.VAE assumes 8x when given a config
    vae.latent_channels = cfg.latent_channels  # and 4 latent channels
    return vae


def build_tiny_model(name: str, seed: int = 0, weight_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) for the named config in `CONFIGS`; `weight_dtype` stores the diffusion model's weights in
    that dtype as UNETLoader's weight_dtype does (`build_unet`)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    return build_unet(cfg, seed, weight_dtype=weight_dtype), build_clip(cfg, seed), build_vae(cfg, seed)
