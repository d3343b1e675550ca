"""The training loop: a LoRA on a clone of the graph's MODEL, trained in the model's own parameterization.

The input ModelPatcher is cloned and the LoRA attached to the clone as activation hooks (see
lora/adapter.py), so the MODEL the graph passed in predicts exactly what it did before, and the MODEL
returned samples with the LoRA through the stock samplers. One torch.Generator, seeded from the
settings, draws the LoRA init, the data order, the noise, the timesteps and the null-prompt dropout,
so a run is reproducible from its seed and resumable from its state file.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..lora.adapter import LoraAdapter, attach
from ..lora.fingerprint import patcher_fingerprint
from ..lora.targets import check_supported
from .cast_weights import recast_in_backward
from .conditioning import batch_inputs, model_inputs
from .config import TrainConfig
from .data import TrainingData
from .logs import term_keys
from .model_state import frozen_base, gradient_checkpointing, outside_inference_mode, release_inference_tensors
from .objective import Coefficients, denoising_loss, min_snr_weight, sample_sigmas
from .optimizers import make_optimizer
from .patches import with_patches
from .regularizers import PASS_KEY, Regularizer, StepContext, TrainingSetup
from .schedules import lr_factor
from .start import InitialLora, check_no_regularizer_start, start_from_initial_lora, with_initial_lora

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


def check_latents(model_patcher, data: TrainingData) -> None:
    channels = model_patcher.model.latent_format.latent_channels
    if data.channels != channels:
        raise ValueError(
            f"training latents have {data.channels} channels but this model expects {channels}: "
            "encode the images with this model's VAE"
        )


def train_lora(
    model_patcher,
    data: TrainingData,
    config: TrainConfig,
    regularizers: list[Regularizer] = (),
    resume=None,
    on_step: Callable | None = None,  # (step, total, loss, steps/s, the model being trained)
    on_checkpoint: Callable | None = None,
    check_interrupt: Callable | None = None,
    initial_lora: InitialLora | dict | None = None,
    log=None,  # a logs.RunLog: each step's losses, learning rate and regularizer values
) -> TrainResult:
    """Train a LoRA on a clone of `model_patcher`; the input patcher and its weights are left as they were.

    `initial_lora` is the starting point instead of a fresh LoRA: its layers, ranks and alphas replace the config's
    targets, rank and alpha. Give an `InitialLora` (converted once, start.py) or a LoRA in any format the pack reads.
    """
    check_supported(model_patcher)
    config.check()
    check_latents(model_patcher, data)
    base_fingerprint = patcher_fingerprint(model_patcher)
    initial = None
    if initial_lora is not None:
        initial = initial_lora if isinstance(initial_lora, InitialLora) else InitialLora.of(model_patcher, initial_lora)
        config = with_initial_lora(config, initial)
    if resume is not None:
        resume.check_compatible(config, base_fingerprint)
        resume.check_regularizers(regularizers)
    run = TrainingRun(model_patcher, data, config, list(regularizers), resume, base_fingerprint,
                      None if initial is None else initial.weights)
    run.train(on_step, on_checkpoint, check_interrupt, log)
    run.adapter.strength = 1.0
    if run.extra_adapters:  # the MODEL handed on carries the trained LoRA only
        for adapter in run.extra_adapters:
            adapter.remove()
        attach(run.clone, [run.adapter])
    return TrainResult(run.clone, run.adapter, run.losses, config.steps, base_fingerprint, run.checkpoints)


class TrainingRun:
    """One training run: clone + adapter, optimizer, data stream, generator, losses.

    `train_lora` drives it to the end; `step` advances it by one optimizer step (the benchmarks
    interleave several runs step by step, each made the loaded model with `activate` first).
    """

    @outside_inference_mode
    def __init__(self, model_patcher, data, config, regularizers=(), resume=None, base_fingerprint=None,
                 initial_lora: dict | None = None):
        regularizers = list(regularizers)
        base_fingerprint = base_fingerprint or patcher_fingerprint(model_patcher)

        self.config, self.regularizers, self.base_fingerprint = config, regularizers, base_fingerprint
        self.clone = model_patcher.clone()
        self.generator = torch.Generator().manual_seed(config.seed)
        if initial_lora is not None:  # native keys (train_lora converts): its layers, ranks and alphas
            self.adapter = LoraAdapter.from_state_dict(self.clone.model.diffusion_model, initial_lora)
            check_no_regularizer_start(regularizers, config, base_fingerprint)
        else:
            self.adapter = LoraAdapter.for_model(
                self.clone.model.diffusion_model, config.targets, config.rank, config.alpha, self.generator
            )
            start_from_initial_lora(self.adapter, regularizers, config, base_fingerprint)
        self.extra_adapters = [a for r in regularizers for a in r.extra_adapters(self.clone.model.diffusion_model)]
        attach(self.clone, [self.adapter, *self.extra_adapters])
        self.activate()
        release_inference_tensors(self.clone.model)
        self.device = self.clone.load_device
        self.stream = data.stream(config.batch_size, self.generator)
        self.optimizer = make_optimizer(config.optimizer, list(self.adapter.parameters()), config.learning_rate,
                                        config.effective_weight_decay())
        self.start_step, self.losses, self.checkpoints = 0, [], []
        if resume is not None:
            self.adapter.load_lora_state_dict(resume.lora_state())
            self.optimizer.load_state_dict(resume.optimizer_state())
            self.stream.load_state(resume.data_state())
            self.start_step, self.losses = resume.step, resume.losses()
        self.resumed_losses = len(self.losses)
        self.term_keys, self.step_terms = term_keys(regularizers), {}  # each term of the last step's loss, for logs
        self.model = self.clone.model
        self.model_sampling = self.clone.get_model_object("model_sampling")
        # one [N, C, h, w] batch, or one [1, C, h, w] per example when the photos have several sizes (buckets)
        self.x0_all = self.setup_latents(data.latents) if not isinstance(data.latents, list) else [
            self.setup_latents(latent[None]) for latent in data.latents]
        one = (lambda i: self.x0_all[i]) if isinstance(self.x0_all, list) else (lambda i: self.x0_all[i : i + 1])  # noqa: E731
        self.cond_inputs = [model_inputs(self.model, c, one(i)) for i, c in enumerate(data.conditionings)]
        self.null_inputs = model_inputs(self.model, data.null, one(0))
        self.null_conditioning = data.null
        self.null_by_shape = {tuple(self.x0_all[0].shape[-3:]): self.null_inputs}  # SDXL conditions on the size
        self.loss_weights = None if data.loss_weights is None else [
            None if w is None else w[None].to(self.device, torch.float32) for w in data.loss_weights]
        self.autocast_dtype = AUTOCAST.get(config.dtype)
        setup = TrainingSetup(
            predict=lambda x_t, sigma, inputs, coefficients, pass_name="train": coefficients.prediction(
                self.forward(x_t, sigma, inputs, pass_name), x_t),
            encode=lambda conditioning, latent: model_inputs(self.model, conditioning, latent),
            prepare_latents=self.setup_latents,
            model_sampling=self.model_sampling, generator=self.generator, device=self.device, config=config,
            adapter=self.adapter, base_fingerprint=base_fingerprint,
        )
        self.setup = setup
        for regularizer in regularizers:
            regularizer.prepare(setup)
        self.regularizer_patches = [r.transformer_patches(self.model.diffusion_model) for r in regularizers]
        if resume is not None:
            self.generator.set_state(resume.rng_state())  # after the regularizers drew their own streams
            for i, regularizer in enumerate(regularizers):
                regularizer.load_state_dict(resume.regularizer_state(i))
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=config.dtype == "fp16" and self.device.type == "cuda"
        )

    def setup_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """LATENT samples -> model-space latents (the model's latent scaling) on the training device, fp32."""
        return self.model.process_latent_in(latents.detach().to(self.device, torch.float32).clone())

    def forward(self, x_t, sigma, inputs, pass_name="train"):
        """x̂0 from apply_model, with the MODEL's own transformer options (patches) as at sampling time,
        plus any patches the regularizers add to watch this pass."""
        options = with_patches(self.clone.model_options.get("transformer_options", {}), self.regularizer_patches)
        options["sigmas"] = sigma
        options["cond_or_uncond"] = [0] * x_t.shape[0]
        options[PASS_KEY] = pass_name
        for regularizer in self.regularizers:
            regularizer.begin_pass(pass_name)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            prediction = self.model.apply_model(x_t, sigma, transformer_options=options, **inputs).float()
        for regularizer in self.regularizers:
            regularizer.end_pass(pass_name)
        return prediction

    def activate(self) -> None:
        """Make this run's clone the loaded model (its LoRA hooks installed on the shared modules)."""
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.clone], force_full_load=True)

    @contextmanager
    def training_mode(self):
        """LoRA parameters trainable, base weights frozen (a cast base keeps no cast copies for backward:
        cast_weights.py), checkpointing wrappers on; all undone on exit."""
        with torch.inference_mode(False), torch.enable_grad():
            self.adapter.requires_grad_(True)
            try:
                with frozen_base(self.model), recast_in_backward(self.model.diffusion_model), \
                        gradient_checkpointing(self.model.diffusion_model, self.config.gradient_checkpointing):
                    yield
            finally:
                self.adapter.requires_grad_(False)

    def step(self) -> float:
        """One optimizer step (the next one of this run); returns its loss."""
        with self.training_mode():
            return self._advance()

    def _advance(self) -> float:
        loss = self.optimizer_step(self.start_step + len(self.losses) - self.resumed_losses)
        self.losses.append(loss)
        return loss

    def train(self, on_step, on_checkpoint, check_interrupt, log=None):
        config = self.config
        started = time.perf_counter()
        with self.training_mode():
            for step in range(self.start_step, config.steps):
                if check_interrupt is not None:
                    check_interrupt()
                loss = self._advance()
                done = step + 1
                if log is not None:
                    log.write_step(done, self)
                if on_step is not None:
                    rate = (done - self.start_step) / max(time.perf_counter() - started, 1e-9)
                    on_step(done, config.steps, loss, rate, self.clone)
                if on_checkpoint is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                    self.checkpoints.append(on_checkpoint(**self.state(done)))

    def optimizer_step(self, step: int) -> float:
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * lr_factor(step, config.steps, config.schedule, config.warmup_steps)
        step_loss, self.step_terms = 0.0, {}
        for _ in range(config.grad_accumulation):
            total = _micro_step(self, step)
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"the loss became {total.item()} at step {step + 1}: lower the learning rate "
                    f"(now {config.learning_rate:g})"
                    + (f" or train in fp32 ({config.dtype} can overflow)" if config.dtype != "fp32" else "")
                    + "; the last checkpoint, if any, is intact"
                )
            self.scaler.scale(total / config.grad_accumulation).backward()
            step_loss += total.item() / config.grad_accumulation
        grad_scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        for regularizer in self.regularizers:
            regularizer.add_parameter_gradients(self.adapter, grad_scale)
        self.scaler.unscale_(self.optimizer)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss

    def state(self, step: int) -> dict:
        return dict(
            adapter=self.adapter, optimizer=self.optimizer, stream=self.stream, generator=self.generator, step=step,
            config=self.config, base_fingerprint=self.base_fingerprint, losses=list(self.losses),
            regularizers=self.regularizers,
        )


def _micro_step(run: TrainingRun, step: int) -> torch.Tensor:
    """Loss of one micro-batch: denoising in native units plus every regularizer's term."""
    config, generator = run.config, run.generator
    index = run.stream.take(config.batch_size)
    b = index.numel()  # the batch size, or fewer at the end of an aspect-ratio bucket
    x0, pixel_weight = _examples(run, index)
    noise = torch.randn(x0.shape, generator=generator).to(run.device)
    u = config.timestep_min + (config.timestep_max - config.timestep_min) * torch.rand(b, generator=generator)
    drop = torch.rand(b, generator=generator) < config.null_prompt_dropout
    if pixel_weight is not None:  # an augmentation moves the mask with the latent: both go through it together
        x0, pixel_weight = _augment(run, torch.cat([x0, pixel_weight], dim=1), u).split([x0.shape[1], 1], dim=1)
    else:
        x0 = _augment(run, x0, u)
    null = _null_inputs(run, tuple(x0.shape[1:])) if drop.any() else None
    inputs = batch_inputs([null if drop[i] else run.cond_inputs[int(index[i])] for i in range(b)])
    captions = batch_inputs([run.cond_inputs[int(index[i])] for i in range(b)]) if drop.any() else inputs
    extras = [e for e in (r.extra_examples(b, tuple(x0.shape[1:])) for r in run.regularizers) if e is not None]
    extras += [e for e in (r.examples_on_batch(x0, noise, u, captions) for r in run.regularizers) if e is not None]
    # one forward for the micro-batch and any examples the regularizers add (prior preservation)
    all_x0 = torch.cat([x0, *(e.x0 for e in extras)])
    all_noise = torch.cat([noise, *(e.noise for e in extras)])
    all_u = torch.cat([u, *(e.u for e in extras)])
    all_inputs = batch_inputs([inputs, *(e.inputs for e in extras)])
    all_sigma = sample_sigmas(run.model_sampling, all_u).to(run.device)
    all_coefficients = Coefficients.of(run.model_sampling, all_sigma)
    all_x_t = all_coefficients.noisy(all_x0, all_noise)
    sigma, x_t, coefficients = all_sigma[:b], all_x_t[:b], all_coefficients.head(b)
    # the frozen forward runs first, while no activations are held for backward: its transient
    # memory then never stacks on the trained forward's
    frozen = frozen_prediction(run, x_t, sigma, inputs, coefficients) if any(
        r.needs_frozen_prediction for r in run.regularizers) else None
    all_prediction = all_coefficients.prediction(run.forward(all_x_t, all_sigma, all_inputs), all_x_t)
    all_target = all_coefficients.target(all_x0, all_noise)
    all_weight = min_snr_weight(all_coefficients, config.min_snr_gamma)
    start = b
    for e in extras:
        end = start + e.x0.shape[0]
        e.prediction, e.target, e.weight = all_prediction[start:end], all_target[start:end], all_weight[start:end]
        start = end
    prediction, target, weight = all_prediction[:b], all_target[:b], all_weight[:b]
    for regularizer in run.regularizers:
        weight = weight * regularizer.denoising_weight(u).to(weight.device)
    denoise = denoising_loss(prediction, target, weight, pixel_weight).mean()
    _add_term(run, "denoising", denoise)
    replaced = any(r.replaces_denoising_loss for r in run.regularizers)
    total = denoise.new_zeros(()) if replaced else denoise
    if run.regularizers:
        ctx = StepContext(x0, u, noise, sigma, x_t, inputs, prediction, target, weight, denoise, run.adapter, step,
                          run.setup, frozen=frozen, caption_inputs=captions)
        for key, regularizer in zip(run.term_keys, run.regularizers):
            term = regularizer.loss(ctx)
            _add_term(run, key, term)
            total = total + term
    return total


def _examples(run: TrainingRun, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The micro-batch's model-space latents [b, C, h, w] and, with masked loss, their weight maps [b, 1, h, w]."""
    if isinstance(run.x0_all, list):
        x0 = torch.cat([run.x0_all[int(i)] for i in index])
    else:
        x0 = run.x0_all[index.to(run.device)]
    if run.loss_weights is None:
        return x0, None
    ones = torch.ones(1, 1, *x0.shape[2:], device=x0.device)
    return x0, torch.cat([ones if run.loss_weights[int(i)] is None else run.loss_weights[int(i)] for i in index])


def _augment(run: TrainingRun, x0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    for regularizer in run.regularizers:
        x0 = regularizer.augment(x0, u, run.generator)
    return x0


def _null_inputs(run: TrainingRun, shape: tuple) -> dict:
    """The empty prompt's model inputs for latents of `shape` (C, h, w), made once per size."""
    if shape not in run.null_by_shape:
        latent = torch.zeros(1, *shape, device=run.device)
        run.null_by_shape[shape] = model_inputs(run.model, run.null_conditioning, latent)
    return run.null_by_shape[shape]


def _add_term(run: TrainingRun, key: str, value: torch.Tensor) -> None:
    """Accumulate one term of the step's loss (mean over micro-batches, as the step's loss); no sync with the device."""
    share = value.detach() / run.config.grad_accumulation
    run.step_terms[key] = run.step_terms[key] + share if key in run.step_terms else share


def frozen_prediction(run: TrainingRun, x_t, sigma, inputs, coefficients: Coefficients) -> torch.Tensor:
    """The base model's prediction: the same loaded weights with the LoRA at strength 0, no graph kept."""
    previous, run.adapter.strength = run.adapter.strength, 0.0
    try:
        with torch.no_grad():
            return coefficients.prediction(run.forward(x_t, sigma, inputs, "frozen"), x_t)
    finally:
        run.adapter.strength = previous
