"""The papers' published training set-ups as settings of this pack: one name each, every value with its source.

`RECIPES[name].train_config(steps=...)` is the Train LoRA settings (a TrainConfig) and `.regularizer(...)` the drift
regularizer the paper trains with, so a paper's set-up is one switch away from Python or a headless run; the same
tables, generated from this module by `markdown()`, are in docs/papers.md#recipes for the nodes' widgets. A recipe
lists only what its sources publish; every other setting is the pack's default (TrainConfig, the method's config).
Where the pack cannot do what a source does (other layers, token embeddings, a sampling method), `differs` says so.

Sources, as read (commits):
- P&P: github.com/rlgnswk/Preserve-and-Personalize @ 2da3509 (SD1.5/README.md, SD1.5/pnp_sd15_lora.py,
  SDXL/README.md, SDXL/pnp_sdxl_lora.py).
- DCO: github.com/kyungmnlee/dco @ 164ae17 (README.md, customize.py).
- DreamBooth: Ruiz et al., CVPR 2023, §3.3 (the prior-preservation loss, λ = 1); the LoRA training as diffusers
  trains it, examples/dreambooth/README.md (its LoRA section) and train_dreambooth_lora.py.
- APT: Chae et al., CVPR 2025 (arXiv 2507.02687) as reported by secondary sources (docs/papers.md §3); no training
  set-up (rank, learning rate, steps, λ_dist, λ_attn) was found, so its recipe holds the indicator and augmentation
  settings only.
"""

from dataclasses import dataclass, field

from .config import TrainConfig


@dataclass(frozen=True)
class Value:
    """One setting of a recipe and where its value comes from."""

    value: object
    source: str


@dataclass(frozen=True)
class Recipe:
    title: str
    base_model: str  # what the paper trained on (the recipe's values are tuned for it)
    train: dict[str, Value]  # TrainConfig fields
    regularizer: str | None = None  # REGULARIZERS name
    regularizer_settings: dict[str, Value] = field(default_factory=dict)
    data: dict[str, Value] = field(default_factory=dict)  # what the pack sets elsewhere (resolution, class images)
    differs: tuple[str, ...] = ()  # where the pack cannot follow the source

    def train_config(self, **overrides) -> TrainConfig:
        """The recipe's Train LoRA settings (the pack's defaults for what it does not give), then `overrides`."""
        config = TrainConfig(**{**{k: v.value for k, v in self.train.items()}, **overrides})
        config.check()
        return config

    def settings(self) -> dict:
        """The regularizer's settings as the recipe gives them (its node's defaults for the others)."""
        return {k: v.value for k, v in self.regularizer_settings.items()}

    def make_regularizer(self, *args, **overrides):
        """The recipe's regularizer with its settings; prior preservation takes its class data as `args`
        (class latents, class conditioning, class prompt). None for a recipe without one."""
        if self.regularizer is None:
            return None
        from .regularizers import REGULARIZERS

        return REGULARIZERS[self.regularizer](*args, **{**self.settings(), **overrides})


PNP = "P&P code"
PNP_SD15_README, PNP_SD15_SCRIPT = f"{PNP}: SD1.5/README.md (LoRA command)", f"{PNP}: SD1.5/pnp_sd15_lora.py default"
PNP_SDXL_README, PNP_SDXL_SCRIPT = f"{PNP}: SDXL/README.md (LoRA command)", f"{PNP}: SDXL/pnp_sdxl_lora.py default"
DCO_README, DCO_SCRIPT = "DCO code: README.md (subject command)", "DCO code: customize.py default"
DB_README, DB_SCRIPT = "diffusers: examples/dreambooth/README.md (LoRA)", "diffusers: train_dreambooth_lora.py default"
NO_DROPOUT = "none in the script (no caption dropout)"

RECIPES: dict[str, Recipe] = {
    "pnp-lora-sd15": Recipe(
        title="Preserve & Personalize, LoRA on SD1.5",
        base_model="runwayml/stable-diffusion-v1-5",
        train={
            "rank": Value(16, PNP_SD15_README + " --lora_r 16"),
            "alpha": Value(27.0, PNP_SD15_README + " --lora_alpha 27"),
            "targets": Value("attention", PNP_SD15_SCRIPT + " UNET_TARGET_MODULES (to_q, to_v)"),
            "learning_rate": Value(1e-4, PNP_SD15_README + " --learning_rate 1e-4"),
            "schedule": Value("constant", PNP_SD15_SCRIPT + " --lr_scheduler constant"),
            "warmup_steps": Value(0, PNP_SD15_README + " --lr_warmup_steps 0"),
            "steps": Value(500, PNP_SD15_README + " --max_train_steps 500"),
            "batch_size": Value(4, PNP_SD15_SCRIPT + " --train_batch_size 4 (the command does not set it)"),
            "grad_accumulation": Value(1, PNP_SD15_SCRIPT + " --gradient_accumulation_steps 1"),
            "optimizer": Value("AdamW", PNP_SD15_SCRIPT + " torch.optim.AdamW"),
            "weight_decay": Value(0.0, PNP_SD15_README + " --adam_weight_decay 0.0"),
            "dtype": Value("fp32", PNP_SD15_SCRIPT + " --mixed_precision None"),
            "max_grad_norm": Value(1.0, PNP_SD15_SCRIPT + " --max_grad_norm 1.0"),
            "null_prompt_dropout": Value(0.0, NO_DROPOUT),
            "min_snr_gamma": Value(0.0, "none in the script"),
            "seed": Value(0, PNP_SD15_README + " --seed 0"),
        },
        regularizer="parameter_anchor",
        regularizer_settings={
            "form": Value("code", PNP_SD15_SCRIPT + ": l2_reg = Σ over LoRA parameters of sum(p²)"),
            "weight": Value(1e-7, PNP_SD15_README + " --l2_weight 1e-7"),
        },
        data={"resolution": Value(512, PNP_SD15_SCRIPT + " --resolution 512")},
        differs=("the script puts its LoRA on to_q and to_v only; the pack's narrowest preset, attention, also "
                 "takes to_k and to_out.0",),
    ),
    "pnp-lora-sdxl": Recipe(
        title="Preserve & Personalize, LoRA on SDXL",
        base_model="stabilityai/stable-diffusion-xl-base-1.0 (VAE madebyollin/sdxl-vae-fp16-fix)",
        train={
            "rank": Value(4, PNP_SDXL_SCRIPT + " --rank 4"),
            "alpha": Value(4.0, PNP_SDXL_SCRIPT + ": get_lora_config sets lora_alpha = rank"),
            "targets": Value("attention", PNP_SDXL_SCRIPT + ": to_k, to_q, to_v, to_out.0"),
            "learning_rate": Value(5e-4, PNP_SDXL_README + " --learning_rate 5e-4"),
            "schedule": Value("constant", PNP_SDXL_README + " --lr_scheduler constant"),
            "warmup_steps": Value(0, PNP_SDXL_README + " --lr_warmup_steps 0"),
            "steps": Value(500, PNP_SDXL_README + " --max_train_steps 500"),
            "batch_size": Value(1, PNP_SDXL_README + " --train_batch_size 1"),
            "grad_accumulation": Value(4, PNP_SDXL_README + " --gradient_accumulation_steps 4"),
            "optimizer": Value("AdamW", PNP_SDXL_SCRIPT + " --optimizer AdamW"),
            "weight_decay": Value(1e-4, PNP_SDXL_SCRIPT + " --adam_weight_decay 1e-04"),
            "dtype": Value("fp16", PNP_SDXL_README + " --mixed_precision fp16"),
            "max_grad_norm": Value(1.0, PNP_SDXL_SCRIPT + " --max_grad_norm 1.0"),
            "null_prompt_dropout": Value(0.0, NO_DROPOUT),
            "min_snr_gamma": Value(0.0, PNP_SDXL_SCRIPT + " --snr_gamma None"),
            "seed": Value(0, PNP_SDXL_README + " --seed 0"),
        },
        regularizer="parameter_anchor",
        regularizer_settings={
            "form": Value("code", PNP_SDXL_SCRIPT + ": l2_reg = Σ over the UNet's LoRA parameters of sum(p²)"),
            "weight": Value(1e-6, PNP_SDXL_README + " --l2_reg_weight 1e-6"),
        },
        data={"resolution": Value(1024, PNP_SDXL_README + " --resolution 1024")},
    ),
    "dco": Recipe(
        title="Direct Consistency Optimization (subject)",
        base_model="stabilityai/stable-diffusion-xl-base-1.0 (VAE madebyollin/sdxl-vae-fp16-fix)",
        train={
            "rank": Value(32, DCO_README + " --rank=32"),
            "alpha": Value(32.0, DCO_SCRIPT + ": LoraConfig lora_alpha = rank"),
            "targets": Value("attention", DCO_SCRIPT + ": to_k, to_q, to_v, to_out.0"),
            "learning_rate": Value(5e-5, DCO_README + " --learning_rate=5e-5"),
            "schedule": Value("constant", DCO_SCRIPT + " --lr_scheduler constant"),
            "warmup_steps": Value(0, DCO_SCRIPT + " --lr_warmup_steps 0"),
            "steps": Value(2000, DCO_README + " --max_train_steps=2000"),
            "batch_size": Value(1, DCO_SCRIPT + " --train_batch_size 1"),
            "grad_accumulation": Value(1, DCO_SCRIPT + " --gradient_accumulation_steps 1"),
            "optimizer": Value("AdamW", DCO_SCRIPT + " torch.optim.AdamW"),
            "weight_decay": Value(1e-4, DCO_SCRIPT + " --adam_weight_decay 1e-04"),
            "dtype": Value("fp16", DCO_SCRIPT + " --mixed_precision fp16"),
            "max_grad_norm": Value(1.0, DCO_SCRIPT + " --max_grad_norm 1.0"),
            "null_prompt_dropout": Value(0.0, NO_DROPOUT),
            "min_snr_gamma": Value(0.0, DCO_SCRIPT + " --snr_gamma None"),
            "seed": Value(0, DCO_README + ' --seed="0"'),
        },
        regularizer="dco",
        regularizer_settings={
            "beta": Value(1000.0, DCO_README + " --dcoloss_beta=1000"),
            "mode": Value("replace", DCO_SCRIPT + ": the DCO loss is the training loss"),
            "weight": Value(1.0, DCO_SCRIPT + ": unweighted"),
        },
        data={"resolution": Value(1024, DCO_SCRIPT + " --resolution 1024")},
        differs=("the command also learns new token embeddings (--train_text_encoder_ti, text-encoder lr 5e-6) and "
                 "trains on the dataset's comprehensive captions; the pack trains no embeddings",
                 "DCO samples with its reward guidance (reward_guidance.py); the pack's guider offers CFG, "
                 "personalization guidance and autoguidance"),
    ),
    "apt": Recipe(
        title="APT: adaptive personalized training (as reported)",
        base_model="SDXL",
        train={},
        regularizer="apt",
        regularizer_settings={
            "adaptive_adjustment": Value(True, "paper (abstract): ATA on"),
            "bins": Value(10, "reported: B = 10 timestep bins"),
            "ema": Value(0.1, "reported: α = 0.1"),
            "temperature": Value(1000.0, "reported: T = 1000, the number of denoising steps"),
            "indicator_gap": Value("absolute", "reported: γ = 1 − exp(−T·(m_pre − m_θ)) on the losses themselves"),
            "zoom_max": Value(3.0, "reported: zoom-out by 1-3x"),
            "rotation_degrees": Value(15.0, "reported: rotation within ±15°"),
            "p_max": Value(0.8, "a third-party port (the paper's cap was not found)"),
        },
        differs=("the paper's rank, learning rate, steps, λ_dist and λ_attn were not found: the pack's defaults "
                 "stand in", "the paper presumably augments pixels; the pack augments the encoded latents"),
    ),
    "dreambooth-lora": Recipe(
        title="DreamBooth with prior preservation, as DreamBooth-LoRA (SD1.5)",
        base_model="runwayml/stable-diffusion-v1-5",
        train={
            "rank": Value(4, DB_SCRIPT + " --rank 4"),
            "alpha": Value(4.0, DB_SCRIPT + ": LoRALinearLayer has no alpha (scale 1, i.e. alpha = rank)"),
            "targets": Value("attention", DB_SCRIPT + ": to_q, to_k, to_v, to_out[0] of every attention"),
            "learning_rate": Value(1e-4, DB_README + " --learning_rate=1e-4"),
            "schedule": Value("constant", DB_README + ' --lr_scheduler="constant"'),
            "warmup_steps": Value(0, DB_README + " --lr_warmup_steps=0"),
            "steps": Value(500, DB_README + " --max_train_steps=500"),
            "batch_size": Value(1, DB_README + " --train_batch_size=1"),
            "grad_accumulation": Value(1, DB_README + " --gradient_accumulation_steps=1"),
            "optimizer": Value("AdamW", DB_SCRIPT + " torch.optim.AdamW"),
            "weight_decay": Value(0.01, DB_SCRIPT + " --adam_weight_decay 1e-2"),
            "dtype": Value("fp32", DB_SCRIPT + " --mixed_precision None"),
            "max_grad_norm": Value(1.0, DB_SCRIPT + " --max_grad_norm 1.0"),
            "null_prompt_dropout": Value(0.0, NO_DROPOUT),
            "min_snr_gamma": Value(0.0, "none in the script"),
            "seed": Value(0, DB_README + ' --seed="0"'),
        },
        regularizer="prior_preservation",
        regularizer_settings={
            "weight": Value(1.0, "DreamBooth paper §3.3: λ = 1; diffusers README --prior_loss_weight=1.0"),
        },
        data={
            "resolution": Value(512, DB_README + " --resolution=512"),
            "class images": Value(200, "diffusers: examples/dreambooth/README.md (prior preservation) "
                                       "--num_class_images=200 (Class Images node: count)"),
            "class prompt": Value("the subject prompt without its identifier",
                                  'DreamBooth paper §3.3 ("a [class noun]")'),
        },
    ),
}


def markdown() -> str:
    """The recipes as docs/papers.md#recipes shows them (tests/unit/test_recipes.py keeps the two the same)."""
    blocks = []
    for name, recipe in RECIPES.items():
        lines = [f"**`{name}`**: {recipe.title}; trained on {recipe.base_model}.", "",
                 "| setting | value | source |", "|---|---|---|"]
        rows = [(f"Train LoRA `{_node_name(k)}`", v) for k, v in recipe.train.items()]
        rows += [(f"{NODES[recipe.regularizer]} `{k}`", v) for k, v in recipe.regularizer_settings.items()]
        rows += [(k, v) for k, v in recipe.data.items()]
        lines += [f"| {label} | {_show(v.value)} | {v.source} |" for label, v in rows]
        if not recipe.train:
            lines.append("| Train LoRA | the pack's defaults | not published |")
        if recipe.differs:
            lines += ["", "Differs from the source: " + "; ".join(recipe.differs) + "."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


NODES = {"parameter_anchor": "Parameter Anchor", "dco": "DCO", "apt": "APT", "prior_preservation": "Prior Preservation"}
NODE_NAMES = {"targets": "target_layers", "schedule": "lr_schedule", "dtype": "training_dtype",
              "grad_accumulation": "gradient_accumulation"}  # TrainConfig field -> the node's input


def _node_name(field_name: str) -> str:
    return NODE_NAMES.get(field_name, field_name)


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
