"""Build the tiny models with ComfyUI's own classes (the seam to comfy.supported_models, comfy.sd).

What the stock checkpoint loader does with a real file (comfy.sd.load_state_dict_guess_config) is
done here from a config: the supported-model class picks model type, latent format and sampling
schedule; `get_model` builds the UNet; the text encoders are ComfyUI's CLIP classes with their json
config overridden through ``model_options["clip_<name>_model_config"]``; the VAE is ComfyUI's
AutoencoderKL. Weights are drawn from a seeded generator, so the same (name, seed) always gives the
same model on every machine.
"""

import math

import torch

from .configs import CONFIGS, TinyModelConfig


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


def _supported_model(cfg: TinyModelConfig):
    import comfy.supported_models

    cls = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[cfg.family]
    model_config = cls(cfg.unet_config())
    # the class's own head settings are for full-width models; a tiny width needs its own
    model_config.unet_config["num_heads"] = -1
    model_config.unet_config["num_head_channels"] = cfg.head_channels
    return model_config


def build_unet(cfg: TinyModelConfig, seed: int):
    """A ModelPatcher around a random-init model of `cfg`, as CheckpointLoaderSimple would return it."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = _supported_model(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=mm.unet_offload_device())
    init_weights_(model.diffusion_model, torch.Generator().manual_seed(seed))
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def build_clip(cfg: TinyModelConfig, seed: int):
    """A comfy.sd.CLIP with the family's real tokenizer(s) and tiny random text transformers."""
    import comfy.sd

    model_config = _supported_model(cfg)
    model_options = {f"clip_{name}_model_config": te.as_comfy_overrides() for name, te in cfg.text_encoders.items()}
    model_options["dtype"] = torch.float32
    clip = comfy.sd.CLIP(target=model_config.clip_target(), model_options=model_options)
    init_weights_(clip.cond_stage_model, torch.Generator().manual_seed(seed + 1))
    return clip


def build_vae(cfg: TinyModelConfig, seed: int):
    """A comfy.sd.VAE (AutoencoderKL, 8x downscale, 4 latent channels) with random weights."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {"params": {"ddconfig": cfg.vae_ddconfig(), "embed_dim": 4}}
    reference = AutoencoderKL(**config["params"])
    init_weights_(reference, torch.Generator().manual_seed(seed + 2))
    vae = comfy.sd.VAE(sd=reference.state_dict(), config=config, dtype=torch.float32)
    vae.downscale_ratio = vae.upscale_ratio = cfg.vae_downscale  # comfy.sd.VAE assumes 8x when given a config
    return vae


def build_tiny_model(name: str, seed: int = 0):
    """(MODEL, CLIP, VAE) for the named config in `CONFIGS`."""
    if name not in CONFIGS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    return build_unet(cfg, seed), build_clip(cfg, seed), build_vae(cfg, seed)
