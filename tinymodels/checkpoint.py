"""A tiny model as one checkpoint file in the layout of its family (SD1.5, SDXL, SD3.5, Flux), and back.

The file is what ComfyUI's own saving path writes (`state_dict_for_saving`: `model.diffusion_model.*`, the
text encoders under their checkpoint prefixes, `first_stage_model.*`), with the architecture's name in the
safetensors metadata. The stock loader (`comfy.sd.load_checkpoint_guess_config`) cannot read it back: its
model detection only knows the full-width architectures (SD1.5 needs model_channels 320 and context 768).
So the modules are built from the named config and the weights go through the same per-architecture
conversions the stock loader applies (`process_clip_state_dict`, `process_vae_state_dict`), with strict
key checks.
"""

import json
import pathlib

ARCHITECTURE_KEY = "architecture"
# parameters SD1.5/SDXL checkpoints do not store and inference does not use (ComfyUI ignores them too)
UNSAVED_CLIP_KEYS = (".logit_scale", ".transformer.text_projection.weight")


def save_tiny_checkpoint(path, name: str, model, clip, vae, metadata: dict | None = None) -> pathlib.Path:
    """Write (MODEL, CLIP, VAE) of the tiny architecture `name` to `path` (atomically, fp32)."""
    from ..comfy_host import checkpoint_state_dict
    from ..lora.storage import save_safetensors_atomic

    path = pathlib.Path(path)
    sd = checkpoint_state_dict(model, clip, vae)
    save_safetensors_atomic({k: v.float() for k, v in sd.items()}, path, {ARCHITECTURE_KEY: name, **(metadata or {})})
    return path


def tiny_architecture(path) -> str | None:
    """The tiny architecture a checkpoint file names in its metadata, or None (a regular checkpoint)."""
    from safetensors import SafetensorError, safe_open

    from .configs import CONFIGS

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(ARCHITECTURE_KEY)
    except (SafetensorError, OSError):  # not a safetensors file: the caller's loader reports that
        return None
    try:
        name = json.loads(raw) if raw else None
    except ValueError:
        name = raw
    return name if name in CONFIGS else None


def load_tiny_checkpoint(path):
    """(MODEL, CLIP, VAE) from a file written by `save_tiny_checkpoint`."""
    import comfy.utils

    from ..lora.storage import load_safetensors
    from .build import build_tiny_model

    name = tiny_architecture(path)
    if name is None:
        raise ValueError(f"{path} names no tiny architecture in its metadata ('{ARCHITECTURE_KEY}')")
    sd, _ = load_safetensors(path)
    model, clip, vae = build_tiny_model(name, 0)
    config = model.model.model_config

    unet_sd = comfy.utils.state_dict_prefix_replace(sd, {"model.diffusion_model.": ""}, filter_keys=True)
    model.model.diffusion_model.load_state_dict(unet_sd, strict=True)

    clip_sd = config.process_clip_state_dict(dict(sd))
    missing, unexpected = clip.cond_stage_model.load_state_dict(clip_sd, strict=False)
    missing = [k for k in missing if not k.endswith(UNSAVED_CLIP_KEYS)]
    unexpected = [k for k in unexpected if not k.endswith(".position_ids")]  # a buffer some layouts save
    if missing or unexpected:
        raise ValueError(f"{path}: text encoder keys do not match {name} (missing {missing[:3]}, unexpected {unexpected[:3]})")

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {k: "" for k in config.vae_key_prefix}, filter_keys=True)
    vae.first_stage_model.load_state_dict(config.process_vae_state_dict(vae_sd), strict=True)
    return model, clip, vae
