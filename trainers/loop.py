"""The training loop: a LoRA on a clone of the graph's MODEL, trained in the model's own parameterization.

The input ModelPatcher is cloned and the LoRA attached to the clone as activation hooks (see
lora_adapter.py), so the MODEL the graph passed in predicts exactly what it did before, and the MODEL
returned samples with the LoRA through the stock samplers. One torch.Generator, seeded from the
settings, draws the LoRA init, the data order, the noise, the timesteps and the null-prompt dropout,
so a run is reproducible from its seed and resumable from its state file.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from .conditioning import batch_inputs, model_inputs
from .config import TrainConfig
from .data import IndexStream, TrainingData
from .fingerprint import model_fingerprint
from .lora_adapter import LoraAdapter
from .objective import Coefficients, denoising_loss, min_snr_weight, sample_sigmas
from .regularizers import Regularizer, StepContext
from .schedules import lr_factor

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: object  # the clone with the LoRA attached at strength 1
    adapter: LoraAdapter
    losses: list[float]
    steps_done: int
    base_fingerprint: str
    checkpoints: list = field(default_factory=list)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def check_latents(model_patcher, data: TrainingData) -> None:
    channels = model_patcher.model.latent_format.latent_channels
    if data.latents.shape[1] != channels:
        raise ValueError(
            f"training latents have {data.latents.shape[1]} channels but this model expects {channels}: "
            "encode the images with this model's VAE"
        )


@contextmanager
def frozen_base(module: torch.nn.Module):
    """No gradients for the base weights while training (restored afterwards): only the LoRA learns."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool):
    """Recompute each top-level UNet block in backward instead of storing its activations.

    Installed on the loaded model only for the duration of training and removed in `finally`.
    """
    blocks = []
    if enabled:
        for name in ("input_blocks", "output_blocks"):
            blocks += list(getattr(diffusion_model, name, []))
        if hasattr(diffusion_model, "middle_block"):
            blocks.append(diffusion_model.middle_block)
    for block in blocks:
        original = block.forward

        def checkpointed(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


def train_lora(
    model_patcher,
    data: TrainingData,
    config: TrainConfig,
    regularizers: list[Regularizer] = (),
    resume=None,
    on_step: Callable | None = None,
    on_checkpoint: Callable | None = None,
    check_interrupt: Callable | None = None,
) -> TrainResult:
    """Train a LoRA on a clone of `model_patcher`; the input patcher and its weights are left as they were."""
    import comfy.model_management

    config.check()
    check_latents(model_patcher, data)
    base_fingerprint = model_fingerprint(model_patcher.model.diffusion_model)
    if resume is not None:
        resume.check_compatible(config, base_fingerprint)

    clone = model_patcher.clone()
    generator = torch.Generator().manual_seed(config.seed)
    adapter = LoraAdapter.for_model(clone.model.diffusion_model, config.targets, config.rank, config.alpha, generator)
    adapter.attach_to(clone)
    comfy.model_management.load_models_gpu([clone], force_full_load=True)
    device = clone.load_device

    stream = IndexStream(len(data), generator)
    optimizer = make_optimizer(config.optimizer, list(adapter.parameters()), config.learning_rate)
    start_step, losses = 0, []
    if resume is not None:
        adapter.load_lora_state_dict(resume.lora_state())
        optimizer.load_state_dict(resume.optimizer_state())
        stream.load_state(resume.data_state())
        generator.set_state(resume.rng_state())
        start_step, losses = resume.step, resume.losses()

    model = clone.model
    model_sampling = clone.get_model_object("model_sampling")
    autocast_dtype = AUTOCAST.get(config.dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == "fp16" and device.type == "cuda")
    checkpoints = []

    with torch.inference_mode(False), torch.enable_grad():
        x0_all = model.process_latent_in(data.latents.detach().to(device, torch.float32).clone())
        cond_inputs = [model_inputs(model, c, x0_all[i : i + 1]) for i, c in enumerate(data.conditionings)]
        null_inputs = model_inputs(model, data.null, x0_all[:1])
        adapter.requires_grad_(True)

        def forward(x_t, sigma, inputs):
            options = dict(clone.model_options.get("transformer_options", {}))
            options["sigmas"] = sigma
            options["cond_or_uncond"] = [0] * x_t.shape[0]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                return model.apply_model(x_t, sigma, transformer_options=options, **inputs).float()

        started = time.perf_counter()
        with frozen_base(model), gradient_checkpointing(model.diffusion_model, config.gradient_checkpointing):
            for step in range(start_step, config.steps):
                if check_interrupt is not None:
                    check_interrupt()
                for group in optimizer.param_groups:
                    group["lr"] = config.learning_rate * lr_factor(step, config.steps, config.schedule, config.warmup_steps)
                step_loss = 0.0
                for _ in range(config.grad_accumulation):
                    total = _micro_step(
                        step, config, stream, generator, x0_all, cond_inputs, null_inputs, model_sampling, forward, adapter, regularizers
                    )
                    if not torch.isfinite(total):
                        raise TrainingDiverged(
                            f"the loss became {total.item()} at step {step + 1}: lower the learning rate "
                            f"(now {config.learning_rate:g})"
                            + (f" or train in fp32 ({config.dtype} can overflow)" if config.dtype != "fp32" else "")
                            + "; the last checkpoint, if any, is intact"
                        )
                    scaler.scale(total / config.grad_accumulation).backward()
                    step_loss += total.item() / config.grad_accumulation
                scaler.unscale_(optimizer)
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(adapter.parameters(), config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(step_loss)
                done = step + 1
                if on_step is not None:
                    elapsed = time.perf_counter() - started
                    on_step(done, config.steps, step_loss, (done - start_step) / max(elapsed, 1e-9))
                if on_checkpoint is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                    checkpoints.append(
                        on_checkpoint(done, adapter=adapter, optimizer=optimizer, stream=stream, generator=generator,
                                      step=done, config=config, base_fingerprint=base_fingerprint, losses=list(losses))
                    )
        adapter.requires_grad_(False)
    adapter.strength = 1.0
    return TrainResult(clone, adapter, losses, config.steps, base_fingerprint, checkpoints)


def _micro_step(step, config, stream, generator, x0_all, cond_inputs, null_inputs, model_sampling, forward, adapter, regularizers):
    """Loss of one micro-batch: denoising in native units plus every regularizer's term."""
    b = config.batch_size
    index = stream.take(b)
    device = x0_all.device
    x0 = x0_all[index.to(device)]
    noise = torch.randn(x0.shape, generator=generator).to(device)
    u = config.timestep_min + (config.timestep_max - config.timestep_min) * torch.rand(b, generator=generator)
    drop = torch.rand(b, generator=generator) < config.null_prompt_dropout
    sigma = sample_sigmas(model_sampling, u).to(device)
    coefficients = Coefficients.of(model_sampling, sigma)
    x_t = coefficients.noisy(x0, noise)
    inputs = batch_inputs([null_inputs if drop[i] else cond_inputs[int(index[i])] for i in range(b)])
    denoised = forward(x_t, sigma, inputs)
    prediction = coefficients.prediction(denoised, x_t)
    target = coefficients.target(x0, noise)
    weight = min_snr_weight(coefficients, config.min_snr_gamma)
    total = denoising_loss(prediction, target, weight).mean()
    if regularizers:

        def frozen():
            previous, adapter.strength = adapter.strength, 0.0
            try:
                with torch.no_grad():
                    return coefficients.prediction(forward(x_t, sigma, inputs), x_t)
            finally:
                adapter.strength = previous

        ctx = StepContext(x0, noise, sigma, x_t, prediction, target, weight, adapter, step, _frozen=frozen)
        for regularizer in regularizers:
            total = total + regularizer.loss(ctx)
    return total
