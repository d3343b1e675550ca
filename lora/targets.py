"""Which layers of a diffusion model get a LoRA: named presets over the module tree."""

import torch

# module-name fragments of the SD/SDXL UNet transformer blocks (comfy.ldm.modules.attention)
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
# the UNet's first and last convolutions read and write the 4 latent channels directly: a rank above 4
# would not fit them, and LoCon trainers leave them out
LATENT_IO_LAYERS = ("input_blocks.0.0", "out.2")

TARGET_PRESETS = {
    "attention": "q, k, v and output projections of self- and cross-attention",
    "attention+ff": "attention projections and the transformer blocks' feed-forward layers",
    "all linear+conv": "every Linear and Conv2d of the diffusion model except the latent in/out convolutions (LoCon)",
}


def _is_attention(name: str) -> bool:
    return (".attn1." in name or ".attn2." in name) and name.endswith(ATTENTION_PROJECTIONS)


def _is_feed_forward(name: str) -> bool:
    return ".transformer_blocks." in name and name.endswith(FEED_FORWARD)


def select_targets(diffusion_model: torch.nn.Module, preset: str) -> dict[str, torch.nn.Module]:
    """{module name within diffusion_model: module} for the preset, in module order.

    Only nn.Linear and groups=1, zero-padded nn.Conv2d layers are eligible: those have an exact
    activation-space LoRA (see adapter.py).
    """
    if preset not in TARGET_PRESETS:
        raise ValueError(f"unknown target preset {preset!r}; choose one of {list(TARGET_PRESETS)}")
    chosen = {}
    for name, module in diffusion_model.named_modules():
        if not is_supported_layer(module) or name in LATENT_IO_LAYERS:
            continue
        if preset == "attention" and not _is_attention(name):
            continue
        if preset == "attention+ff" and not (_is_attention(name) or _is_feed_forward(name)):
            continue
        chosen[name] = module
    if not chosen:
        raise ValueError(f"target preset {preset!r} matched no layer of this model")
    return chosen


def is_supported_layer(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, torch.nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False
