"""Validation images during training: the model being trained, sampled at a fixed seed (the seam to comfy.sample)."""

import torch


def sample_preview(model, positive, negative, vae, *, seed: int, steps: int, cfg: float, latent_shape) -> torch.Tensor:
    """One image [1, H, W, 3] from `model` (LoRA attached) with euler/normal; no progress bar of its own."""
    import comfy.sample

    latent = torch.zeros(1, *latent_shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.no_grad():
        samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                                      disable_pbar=True, seed=seed)
        return vae.decode(samples).float().clamp(0, 1)[:1]
