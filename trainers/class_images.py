"""Class images for prior preservation, sampled by the base model itself and cached on disk.

The cache key covers everything that decides the images (base-model fingerprint, prompt, count, seed,
size and sampler settings), so a rerun with the same inputs loads them instead of sampling again, and
any change samples anew. Latents are cached (safetensors); images are decoded from them.
"""

import hashlib
import json
import pathlib

import torch

from ..lora.storage import load_safetensors, save_safetensors_atomic

CHUNK = 4  # images sampled per batch


def cache_key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def generate_class_latents(model, positive, negative, *, count, seed, width, height, steps, cfg, sampler, scheduler,
                           cache_folder: pathlib.Path, base_fingerprint: str, prompt: str) -> tuple[torch.Tensor, bool]:
    """(latents [count, C, h, w], whether they came from the cache). Chunk k uses seed + k. C and the downscale
    (h = height / 8) are the model's own latent format's (4 channels for SD1.x/SDXL, 16 for SD3 and Flux)."""
    import nodes

    key = cache_key(model=base_fingerprint, prompt=prompt, count=count, seed=seed, width=width, height=height,
                    steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler)
    path = cache_folder / f"{key}.safetensors"
    if path.exists():
        return load_safetensors(path)[0]["latents"], True
    chunks = []
    for k, start in enumerate(range(0, count, CHUNK)):
        n = min(CHUNK, count - start)
        empty = {"samples": empty_latents(model, n, width, height)}
        out = nodes.common_ksampler(model, seed + k, steps, cfg, sampler, scheduler, positive, negative, empty)[0]
        chunks.append(out["samples"].cpu())
    latents = torch.cat(chunks)
    save_safetensors_atomic({"latents": latents}, path, {"prompt": prompt, "count": count, "seed": seed})
    return latents, False


def empty_latents(model, n: int, width: int, height: int) -> torch.Tensor:
    """Zeros in the shape of n latents of the model's family, as its empty-latent node makes them."""
    latent_format = model.get_model_object("latent_format")
    down = getattr(latent_format, "spacial_downscale_ratio", 8)
    return torch.zeros(n, latent_format.latent_channels, height // down, width // down)
