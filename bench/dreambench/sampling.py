"""Sampling the evaluation prompts with the pack's guider through ComfyUI's samplers, and the image files.

One guider per (subject, LoRA, guidance) — guidance.guider.make_guider, the Personalization Guider node's
code — whose conditioning is swapped prompt by prompt, so the LoRA-merged clone stays loaded. Each image's
noise comes from its own seed (seed + prompt index x images per prompt + image index), so an image does not
depend on which others were sampled with it.
"""

import os
import pathlib
import tempfile

import torch


class Sampler:
    def __init__(self, model, clip, vae, *, sampler: str, scheduler: str, steps: int, resolution: int):
        import comfy.samplers

        self.model, self.clip, self.vae = model, clip, vae
        self.sampler = comfy.samplers.sampler_object(sampler)
        self.sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
        channels = model.get_model_object("latent_format").latent_channels
        down = vae.spacial_compression_encode()
        self.latent_shape = (channels, resolution // down, resolution // down)
        self.null = self.encode("")

    def encode(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def guider(self, lora: dict, guidance: str, cfg: float, weak_strength: float):
        from ...guidance.guider import make_guider

        return make_guider(self.model, self.null, self.null, lora, cfg=cfg, mode=guidance,
                           s_start=weak_strength, s_end=weak_strength)

    def images(self, guider, prompt: str, seeds: list[int]) -> torch.Tensor:
        """IMAGE [len(seeds), H, W, 3] on the CPU: `prompt` against the null prompt."""
        guider.set_conds(self.encode(prompt), self.null)
        noise = torch.cat([torch.randn(1, *self.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        with torch.inference_mode():
            latents = guider.sample(noise, torch.zeros_like(noise), self.sampler, self.sigmas, disable_pbar=True,
                                    seed=seeds[0])
            return self.vae.decode(latents).float().clamp(0, 1).cpu()


def seeds_for(seed: int, prompt_index: int, images_per_prompt: int) -> list[int]:
    start = seed + prompt_index * images_per_prompt
    return list(range(start, start + images_per_prompt))


def save_png_atomic(image: torch.Tensor, path: pathlib.Path) -> None:
    """One IMAGE [H, W, 3] as an 8-bit PNG, round(255·x) as ComfyUI's SaveImage and the metrics quantize it."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def load_png_batch(paths) -> torch.Tensor:
    """uint8 [N, 3, H, W], the form metrics.preprocess.to_8bit hands the backbones (no re-quantization)."""
    import numpy as np
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
