"""The pretraining recipe of the shapes model (the demo's and the drift benchmark's).

Three stages, seeded and deterministic on a CPU:
1. the VAE: ComfyUI's AutoencoderKL at 4x (32x32 pictures -> 4x8x8 latents), trained as an autoencoder
   with a small KL term on whole 32x32 pictures (16x16 crops, tried first, decoded 32x32 pictures with smeared
   colours and edges: the mid-block attention then sees 8x8 latents it never trained on), the learning rate on a
   cosine schedule, then rescaled exactly (1x1 convs) so SD1.5's latent scale 0.18215 maps its latents to unit
   variance;
2. the classifier (classifier.py) on rendered pictures, half of each batch as the VAE decodes it;
3. the UNet (SD1.5-shaped, ComfyUI's own openaimodel) on the ε objective of SD1.5's discrete schedule,
   with 10% empty captions for classifier-free guidance. The text transformer (real CLIP tokenizer, two
   tiny layers) stays at its seeded random init: the UNet learns to read it.

`build` writes one checkpoint in the SD1.5 layout (model.diffusion_model.*, cond_stage_model.*,
first_stage_model.*), the classifier, and a report, each atomically. This file, dataset.py and classifier.py
are the recipe: their code (comments and docstrings aside), the settings and the model config make the recipe
hash that weights.py checks the shipped weights against, and that names the cache of other presets.
"""

import dataclasses
import json
import os
import pathlib
import time
from dataclasses import dataclass

import torch

ARCHITECTURE = "drift-bench"
CHECKPOINT, CLASSIFIER, REPORT = "drift-bench.safetensors", "classifier.safetensors", "pretrain.json"


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    classifier_steps: int = 1000
    classifier_batch: int = 64
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-5
    pool: int = 4096  # pictures encoded once for the UNet's training
    unet_steps: int = 8000
    unet_batch: int = 24
    unet_lr: float = 5e-4
    unet_warmup: int = 100
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # Min-SNR-γ weighting (Hang et al. 2023): w = min(SNR, γ)/SNR on the ε loss
    ema_decay: float = 0.995  # the saved UNet is the exponential moving average of the trained one


# PRESETS: "full" is sized for about 20 min on 2 CPU cores (measured: 1135 s wall, 2041 CPU-s with two torch threads);
# with it the base model draws the prompted shape and colour in 0.93 of prior-prompt samples (bench/results/prior.md;
# 4000 UNet steps with a VAE trained 600 steps on crops: 0.53); "quick" is a first look (rough pictures)
PRESETS = {
    "full": Settings(),
    "quick": Settings(classifier_steps=200, vae_steps=200, pool=2048, unet_steps=500, unet_warmup=50, unet_lr=8e-4),
}
SMOKE = Settings(classifier_steps=3, classifier_batch=8, vae_steps=3, vae_batch=4, pool=16, unet_steps=20, unet_batch=4, unet_warmup=0)


def build(folder: pathlib.Path, settings: Settings, log=print, progress=None, metadata: dict | None = None) -> dict:
    """Pretrain into `folder`, `metadata` added to each weight file's. `progress(done, total)` counts one unit for
    the classifier, one per VAE step, one for encoding the training set and one per UNet step."""
    from ..lora.storage import save_safetensors_atomic
    from . import classifier

    with torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(settings.seed)
        started, cpu_started = time.perf_counter(), time.process_time()
        timings = {}
        total, done = 2 + settings.vae_steps + settings.unet_steps, 0

        def tick():
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        def mark(stage):
            timings[stage] = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu_started, 1)}

        model, clip, vae = _random_model(settings.seed)
        losses = {"vae": train_vae(vae, settings, log, on_step=tick)}
        mark("vae")
        net = classifier.train(settings.classifier_steps, settings.classifier_batch, settings.seed, log,
                               roundtrip=lambda x: vae.decode(vae.encode(x)))
        tick()
        save_safetensors_atomic(net.state_dict(), folder / CLASSIFIER, metadata)
        mark("classifier")
        latents, conds, null = _training_set(clip, vae, settings, log)
        tick()
        mark("encode")
        losses["unet"] = train_unet(model, latents, conds, null, settings, log, on_step=tick)
        mark("unet")
        save_checkpoint(folder / CHECKPOINT, model, clip, vae, {"settings": dataclasses.asdict(settings), **(metadata or {})})
        report = {"settings": dataclasses.asdict(settings), "timings": timings, "threads": torch.get_num_threads(),
                  "classifier_accuracy": classifier.accuracy(net), "losses": {k: _curve(v) for k, v in losses.items()}}
        _write_json(folder / REPORT, report)
        log(f"[shapes] pretraining done in {timings['unet']['wall_s']:.0f} s wall, {timings['unet']['cpu_s']:.0f} s CPU: {folder}")
        return report


def _curve(losses: list[float], points: int = 10) -> list[float]:
    """The loss curve averaged over `points` equal windows."""
    n = max(1, len(losses) // points)
    return [round(sum(losses[i:i + n]) / len(losses[i:i + n]), 5) for i in range(0, len(losses), n)][:points]


def _write_json(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _random_model(seed: int):
    from ..tinymodels.build import build_tiny_model

    return build_tiny_model(ARCHITECTURE, seed)


# --- VAE -------------------------------------------------------------------------------------------

def train_vae(vae, settings: Settings, log=print, on_step=None) -> list[float]:
    """Autoencoder training of vae.first_stage_model (AutoencoderKL) in place; returns the losses."""
    from . import dataset

    ae = vae.first_stage_model.train()
    for p in ae.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(ae.parameters(), lr=settings.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.vae_steps)
    generator = torch.Generator().manual_seed(settings.seed + 10)
    images, _ = dataset.draw(settings.vae_steps * settings.vae_batch, settings.seed + 10)
    x_all = images.permute(0, 3, 1, 2) * 2 - 1
    losses = []
    for step in range(settings.vae_steps):
        x = _random_crops(x_all[step * settings.vae_batch:(step + 1) * settings.vae_batch], settings.vae_crop, generator)
        mean, logvar = ae.quant_conv(ae.encoder(x)).chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
        rec = ae.decoder(ae.post_quant_conv(z))
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
        loss = torch.nn.functional.mse_loss(rec, x) + settings.vae_kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == settings.vae_steps - 1:
            log(f"[shapes] VAE step {step + 1}/{settings.vae_steps} loss {loss.item():.4f}")
        if on_step is not None:
            on_step()
    ae.eval().requires_grad_(False)
    rescale_latents(ae, x_all[:256])
    return losses


def _random_crops(x: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    if crop >= x.shape[-1]:
        return x
    # one offset per batch, a multiple of the VAE's 4x factor so latent cells stay aligned
    top, left = (4 * torch.randint(0, (x.shape[-1] - crop) // 4 + 1, (2,), generator=generator)).tolist()
    return x[..., top:top + crop, left:left + crop]


@torch.no_grad()
def rescale_latents(ae, x: torch.Tensor, scale_factor: float = 0.18215) -> float:
    """Fold a scale k into quant_conv (mean channels ×k, log-variance +2·ln k) and post_quant_conv (÷k).

    The decoder sees the same z as before, so reconstructions are unchanged; the latents' spread
    becomes 1/scale_factor, so SD1.5's latent format hands the UNet unit-variance latents.
    """
    import math

    mean = ae.quant_conv(ae.encoder(x)).chunk(2, dim=1)[0]
    k = 1.0 / (scale_factor * float(mean.std()))
    c = mean.shape[1]
    ae.quant_conv.weight[:c] *= k
    ae.quant_conv.bias[:c] *= k
    ae.quant_conv.bias[c:] += 2 * math.log(k)
    ae.post_quant_conv.weight /= k
    return k


# --- UNet ------------------------------------------------------------------------------------------

def encode_images(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> LATENT samples [N, 4, H/4, W/4] with the VAE's mean (ComfyUI's VAE.encode)."""
    with torch.no_grad():
        return torch.cat([vae.encode(images[i:i + batch]) for i in range(0, images.shape[0], batch)]).float()


def encode_text(clip, text: str) -> torch.Tensor:
    with torch.no_grad():
        return clip.encode_from_tokens(clip.tokenize(text)).float()


def _training_set(clip, vae, settings: Settings, log=print):
    from . import dataset

    log(f"[shapes] encoding {settings.pool} pictures and {len(dataset.all_captions())} captions")
    images, pictures = dataset.draw(settings.pool, settings.seed + 20)
    latents = encode_images(vae, images)
    captions = dataset.all_captions()
    table = torch.cat([encode_text(clip, c) for c in captions])
    index = torch.tensor([captions.index(p.caption) for p in pictures])
    return latents, table[index], encode_text(clip, "")


def train_unet(model_patcher, latents, conds, null, settings: Settings, log=print, on_step=None) -> list[float]:
    """ε-objective training of the whole UNet in place; returns the losses."""
    model = model_patcher.model
    unet = model.diffusion_model.train()
    for p in unet.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=0.0)
    warmup = max(1, settings.unet_warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    ms = model.model_sampling
    ema = [p.detach().clone() for p in unet.parameters()]
    generator = torch.Generator().manual_seed(settings.seed + 30)
    x0_all = model.process_latent_in(latents)
    losses = []
    for step in range(settings.unet_steps):
        idx = torch.randint(0, x0_all.shape[0], (settings.unet_batch,), generator=generator)
        x0 = x0_all[idx]
        drop = torch.rand(settings.unet_batch, generator=generator) < settings.caption_dropout
        context = torch.where(drop[:, None, None], null.expand_as(conds[idx]), conds[idx])
        t = torch.randint(0, ms.sigmas.shape[0], (settings.unet_batch,), generator=generator)
        sigma = ms.sigmas[t]
        noise = torch.randn(x0.shape, generator=generator)
        x_t = ms.noise_scaling(sigma, noise, x0)
        denoised = model.apply_model(x_t, sigma, c_crossattn=context)
        eps = (x_t - denoised) / sigma.reshape(-1, 1, 1, 1)
        loss = (min_snr_weight(sigma, settings.min_snr_gamma) * ((eps - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.lerp_(p, 1 - settings.ema_decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == settings.unet_steps - 1:
            recent = losses[-100:]
            log(f"[shapes] UNet step {step + 1}/{settings.unet_steps} loss {sum(recent) / len(recent):.4f}")
        if on_step is not None:
            on_step()
    unet.eval().requires_grad_(False)
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    return losses


def min_snr_weight(sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ on the ε loss (Hang et al. 2023, eq. 9 in ε units): min(SNR, γ)/SNR with SNR = 1/σ²; 1 = off."""
    if gamma <= 0:
        return torch.ones_like(sigma)
    return torch.clamp(gamma * sigma**2, max=1.0)


# --- checkpoint ------------------------------------------------------------------------------------

def save_checkpoint(path: pathlib.Path, model, clip, vae, metadata: dict) -> None:
    """The SD1.5 checkpoint layout, named `drift-bench` in its metadata (tinymodels/checkpoint.py)."""
    from ..tinymodels.checkpoint import save_tiny_checkpoint

    save_tiny_checkpoint(path, ARCHITECTURE, model, clip, vae, metadata)


def load_checkpoint(path) -> tuple:
    """(MODEL, CLIP, VAE) from a drift-bench checkpoint: ComfyUI's classes from the config, then the weights.
    CheckpointLoaderSimple cannot detect this file (its SD1.5 detection needs the full-size UNet and CLIP-L)."""
    from ..tinymodels.checkpoint import load_tiny_checkpoint

    return load_tiny_checkpoint(path)
