"""Driftless Train LoRA: train a LoRA on the graph's own MODEL; declares the knobs and wires the trainer."""

import logging

from comfy_api.latest import io

from ..trainers.config import DTYPES, OPTIMIZERS, TrainConfig
from ..trainers.schedules import SCHEDULES
from ..lora.targets import TARGET_PRESETS, describe_presets
from .training_data import TRAINING_DATA
from .validation import CheckedNode

REGULARIZER = io.Custom("DRIFTLESS_REGULARIZER")
DEFAULTS = TrainConfig()


def _describe(options: dict) -> str:
    return " ".join(f"{k}: {v}." for k, v in options.items())


class TrainLora(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS
        return io.Schema(
            node_id="DriftlessTrainLoRA",
            display_name="Driftless Train LoRA",
            category="Driftless/train",
            description=(
                "Trains a LoRA on a clone of the MODEL you connect, so what is trained is exactly what the "
                "samplers will sample; the input MODEL is left unchanged. The loss is in the model's own "
                "parameterization (noise for SD1.5/SDXL, v for v-models, flow for rectified flow). "
                "Connect drift regularizers to keep the model close to what it knew."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to personalize (from Load Checkpoint)."),
                TRAINING_DATA.Input("training_data", tooltip="From Driftless Training Data."),
                io.Int.Input("steps", default=d.steps, min=1, max=100000,
                             tooltip="Optimizer steps in total; on resume, training continues up to this step."),
                io.Float.Input("learning_rate", default=d.learning_rate, min=1e-7, max=1.0, step=1e-5, round=False,
                               tooltip="Base learning rate of the LoRA weights (1e-4 is a common start for rank 16)."),
                io.Int.Input("rank", default=d.rank, min=1, max=512,
                             tooltip="LoRA rank r: more capacity with more parameters. 4-32 is usual for a subject."),
                io.Float.Input("alpha", default=d.alpha, min=0.01, max=1024.0, step=0.5,
                               tooltip="LoRA alpha: the update is scaled by alpha/rank. alpha = rank gives scale 1."),
                io.Combo.Input("target_layers", options=list(TARGET_PRESETS), default=d.targets,
                               tooltip="Which layers get a LoRA; what each preset means depends on the model family. "
                               + describe_presets()),
                io.Int.Input("batch_size", default=d.batch_size, min=1, max=64,
                             tooltip="Examples per micro-batch (drawn without replacement within an epoch)."),
                io.Int.Input("gradient_accumulation", default=d.grad_accumulation, min=1, max=256,
                             tooltip="Micro-batches per optimizer step: the effective batch is batch_size x this."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default=d.optimizer, tooltip=_describe(OPTIMIZERS)),
                io.Combo.Input("lr_schedule", options=list(SCHEDULES), default=d.schedule, tooltip=_describe(SCHEDULES)),
                io.Int.Input("warmup_steps", default=d.warmup_steps, min=0, max=100000,
                             tooltip="Steps of linear warm-up for the cosine and linear warm-up schedules."),
                io.Combo.Input("training_dtype", options=list(DTYPES), default=d.dtype,
                               tooltip="Precision of the forward pass (autocast). fp32 is exact and slowest; bf16 is "
                               "the usual choice on recent GPUs; fp16 uses loss scaling on CUDA. LoRA weights stay fp32."),
                io.Boolean.Input("gradient_checkpointing", default=d.gradient_checkpointing,
                                 tooltip="Recompute each block in the backward pass (UNet layers; SD3 joint blocks; Flux "
                                 "double and single blocks; all but the last to run, which backward needs at once): "
                                 "much less memory, ~30% slower."),
                io.Int.Input("seed", default=d.seed, min=0, max=2**63 - 1,
                             tooltip="Seeds the LoRA init, data order, noise, timesteps and dropout: same seed, same run."),
                io.Float.Input("null_prompt_dropout", default=d.null_prompt_dropout, min=0.0, max=1.0, step=0.01,
                               tooltip="Probability of training an example on the empty prompt instead of its caption, "
                               "so the LoRA also learns the unconditional branch that guidance uses."),
                io.Float.Input("min_snr_gamma", default=d.min_snr_gamma, min=0.0, max=100.0, step=0.5,
                               tooltip="Min-SNR-gamma loss weighting (Hang et al. 2023); 5 is the paper's value, 0 = off."),
                io.Float.Input("timestep_min", default=d.timestep_min, min=0.0, max=1.0, step=0.01,
                               tooltip="Lowest noise level trained, as a fraction of the schedule (0 = clean end)."),
                io.Float.Input("timestep_max", default=d.timestep_max, min=0.0, max=1.0, step=0.01,
                               tooltip="Highest noise level trained, as a fraction of the schedule (1 = pure noise)."),
                io.Float.Input("max_grad_norm", default=d.max_grad_norm, min=0.0, max=100.0, step=0.1,
                               tooltip="Clip the gradient norm to this value before each step; 0 = no clipping."),
                io.String.Input("run_name", default="driftless_lora",
                                tooltip="Folder under models/loras for checkpoints of this run (and what 'latest' resumes)."),
                io.Int.Input("checkpoint_every", default=d.checkpoint_every, min=0, max=100000,
                             tooltip="Save a LoRA + resume state every N steps into models/loras/<run_name>/; 0 = never."),
                io.String.Input("resume_from", default="", optional=True,
                                tooltip="Empty: start fresh. 'latest': the newest state in models/loras/<run_name>/. "
                                "Or a .train-state path relative to models/loras."),
                io.LoraModel.Input("initial_lora", optional=True,
                                   tooltip="Start from this LoRA instead of a fresh one (from Load LoRA: ComfyUI, "
                                   "diffusers/PEFT or kohya files). Its layers, ranks and alphas replace target_layers, "
                                   "rank and alpha; a resume must use the same initial LoRA."),
                REGULARIZER.Input("regularizer", optional=True,
                                  tooltip="Drift regularizer(s) from a Driftless regularizer node; chained terms add."),
                io.Int.Input("validation_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Sample a validation image every N steps (and at the end) at a fixed seed; 0 = off. "
                             "Needs the VAE and a CLIP."),
                io.String.Input("validation_prompt", default="a photo of sks dog", optional=True,
                                tooltip="Prompt of the validation images (the null prompt is the negative)."),
                io.Int.Input("validation_seed", default=0, min=0, max=2**31 - 1, optional=True,
                             tooltip="Noise seed of every validation image, so they differ only by training progress."),
                io.Int.Input("validation_steps", default=20, min=1, max=200, optional=True,
                             tooltip="Sampling steps of a validation image (euler, normal schedule)."),
                io.Float.Input("validation_cfg", default=5.0, min=0.0, max=30.0, step=0.1, optional=True,
                               tooltip="Guidance scale of the validation images."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes the validation prompt (the model's text encoder)."),
                io.Vae.Input("vae", optional=True, tooltip="Decodes the validation images (the model's VAE)."),
                io.Float.Input("weight_decay", default=d.weight_decay, min=0.0, max=1.0, step=0.001, round=False, optional=True,
                               tooltip=f"AdamW's decoupled weight decay: each step multiplies the LoRA weights by 1 - "
                               f"learning_rate x this (AdamW8bit and Prodigy too; Adam and SGD use none). {d.weight_decay:g} is torch's and diffusers' "
                               "DreamBooth-LoRA default; at lr 1e-4 over 500 steps it shrinks the LoRA by 0.05%, next to "
                               "nothing. 0 = off, as Preserve & Personalize's SD1.5 LoRA recipe trains."),
                io.Boolean.Input("tensorboard", default=True, optional=True,
                                 tooltip="Write TensorBoard event files into models/loras/<run_name>/ (loss, each "
                                 "regularizer's term, learning rate, APT's gamma per timestep bin, validation images); "
                                 "view with: tensorboard --logdir models/loras. Needs pip install tensorboard: "
                                 "without it the run trains as usual and the log says no events were written."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The input model with the trained LoRA applied."),
                io.LoraModel.Output(display_name="lora", tooltip="The trained LoRA in memory (ComfyUI's LORA_MODEL)."),
                io.LossMap.Output(display_name="loss", tooltip="Loss per step ({'loss': [...]}), as ComfyUI's loss graph reads it."),
                io.Image.Output(display_name="loss_plot", tooltip="The loss curve as an image."),
                io.Image.Output(display_name="validation_images",
                                tooltip="One image per validation point, oldest first (a black 64x64 image when off)."),
                io.Int.Output(display_name="steps", tooltip="Steps trained in total (including resumed ones)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **kw) -> bool | str:
        try:
            problems = _config(**kw).problems()
        except TypeError:  # a knob arrives through a link: checked when the node runs
            return True
        return "; ".join(problems) if problems else True

    @classmethod
    def fingerprint_inputs(cls, run_name="driftless_lora", resume_from="", **kw):
        if (resume_from or "").strip() == "latest":
            from ..trainers.state import latest_state
            from .host import lora_folder

            latest = latest_state(lora_folder() / run_name)
            return str(latest) if latest else ""
        return ""

    @classmethod
    def execute(cls, model, training_data, run_name, checkpoint_every, resume_from="", regularizer=None,
                validation_every=0, validation_prompt="", validation_seed=0, validation_steps=20, validation_cfg=5.0,
                clip=None, vae=None, initial_lora=None, tensorboard=True, **knobs):
        from ..lora.files import LoraWeights, lora_metadata, save_lora
        from ..lora.targets import check_supported
        from ..trainers.logs import RunLog
        from ..trainers.loop import train_lora
        from ..trainers.start import InitialLora, with_initial_lora
        from ..trainers.report import loss_plot
        from ..trainers.state import ResumeState, checkpoint_paths, latest_state, save_state
        from .host import check_interrupt, lora_folder, progress_reporter, resolve_in_loras

        check_supported(model)  # before anything else: a family the pack cannot train is named, not crashed on
        config = _config(checkpoint_every=checkpoint_every, **knobs)
        if initial_lora is not None:
            initial_lora = InitialLora.of(model, initial_lora)
            config = with_initial_lora(config, initial_lora)
        regularizers = list(regularizer or [])
        run_folder = resolve_in_loras(run_name, kind="run name")
        resume = None
        if (resume_from or "").strip() == "latest":
            latest = latest_state(run_folder)
            if latest is None:
                raise ValueError(f"resume_from is 'latest' but {run_folder} holds no .train-state file yet")
            resume = ResumeState(latest)
        elif (resume_from or "").strip():
            resume = ResumeState(resolve_in_loras(resume_from.strip(), kind="resume path"))

        def on_checkpoint(**state):
            step = state["step"]
            lora_path, state_path = checkpoint_paths(run_folder, step)
            meta = lora_metadata(config, state["base_fingerprint"], step, training_data.captions, regularizers,
                                 state["adapter"])
            save_lora(LoraWeights(state["adapter"].lora_state_dict(), meta), lora_folder(), str(lora_path.relative_to(lora_folder())))
            save_state(state_path, **state)
            logging.info("Driftless: checkpoint at step %d: %s", step, lora_path)
            return lora_path

        report = progress_reporter(cls.hidden.unique_id, config.steps)
        validation = _validation(validation_every, validation_prompt, validation_seed, validation_steps, validation_cfg,
                                 clip, vae, training_data)
        log = RunLog.open(run_folder, (resume.step if resume is not None else 0) + 1, tensorboard)
        validation.log = log

        def on_step(step, total, loss, rate, trained_model):
            report(step, total, loss, rate)
            validation(step, total, trained_model)

        try:
            result = train_lora(
                model, training_data, config, regularizers, resume,
                on_step=on_step,
                on_checkpoint=on_checkpoint,
                check_interrupt=check_interrupt,
                initial_lora=initial_lora,
                log=log,
            )
        finally:
            if log is not None:
                log.close()
        meta = lora_metadata(config, result.base_fingerprint, result.steps_done, training_data.captions, regularizers,
                             result.adapter)
        lora = LoraWeights(result.adapter.lora_state_dict(), meta)
        return io.NodeOutput(result.model, lora, {"loss": result.losses}, loss_plot(result.losses), validation.images(),
                             result.steps_done)


def _validation(every, prompt, seed, steps, cfg, clip, vae, training_data):
    """A callback sampling the model being trained every `every` steps; `.images()` returns the batch."""
    import torch

    from ..trainers.validation import sample_preview

    images = []
    if every and (clip is None or vae is None):
        raise ValueError("validation images need the CLIP and the VAE inputs connected (or set validation_every to 0)")
    if every:
        encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
        positive, negative = encode(prompt), encode("")

    def callback(step, total, model):
        if every and (step % every == 0 or step == total):
            images.append(sample_preview(model, positive, negative, vae, seed=seed, steps=steps, cfg=cfg,
                                         latent_shape=training_data.preview_shape))
            if callback.log is not None:
                callback.log.image(step, images[-1])

    callback.images = lambda: torch.cat(images) if images else torch.zeros(1, 64, 64, 3)
    callback.log = None  # a RunLog the images also go to
    return callback


def _config(steps, learning_rate, rank, alpha, target_layers, batch_size, gradient_accumulation, optimizer, lr_schedule,
            warmup_steps, training_dtype, gradient_checkpointing, seed, null_prompt_dropout, min_snr_gamma,
            timestep_min, timestep_max, max_grad_norm, checkpoint_every=0, weight_decay=DEFAULTS.weight_decay,
            **_ignored) -> TrainConfig:
    return TrainConfig(
        rank=rank, alpha=alpha, targets=target_layers, learning_rate=learning_rate, schedule=lr_schedule,
        warmup_steps=warmup_steps, steps=steps, batch_size=batch_size, grad_accumulation=gradient_accumulation,
        optimizer=optimizer, weight_decay=weight_decay, dtype=training_dtype, gradient_checkpointing=gradient_checkpointing, seed=seed,
        null_prompt_dropout=null_prompt_dropout, min_snr_gamma=min_snr_gamma, timestep_min=timestep_min,
        timestep_max=timestep_max, max_grad_norm=max_grad_norm, checkpoint_every=checkpoint_every,
    )
