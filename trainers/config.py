"""Training settings: one dataclass, validated up front, with the fingerprint a resume must match."""

import hashlib
import json
from dataclasses import asdict, dataclass

from .optimizers import PRODIGY_LR, missing_package
from .schedules import SCHEDULES
from ..lora.targets import TARGET_PRESETS

OPTIMIZERS = {
    "AdamW": "Adam with decoupled weight decay, the weight_decay input (Loshchilov & Hutter 2019); the usual LoRA choice",
    "Adam": "Adam without weight decay (weight_decay is not used)",
    "SGD": "SGD with momentum 0.9, without weight decay (weight_decay is not used)",
    "AdamW8bit": "AdamW with 8-bit moments (bitsandbytes) and the weight_decay input: 1/4 of AdamW's optimizer memory; "
    "needs pip install bitsandbytes",
    "Prodigy": "Adam that estimates its own step size (Mishchenko & Defazio 2024), decoupled weight_decay: set "
    "learning_rate to 1.0, the schedule still applies; needs pip install prodigyopt",
}
# AdamW's decoupled weight decay when none is given: torch's AdamW default and diffusers' DreamBooth-LoRA script's
# (train_dreambooth_lora.py, --adam_weight_decay 1e-2). Each step multiplies the LoRA weights by 1 − lr·wd: at
# lr 1e-4 over 500 steps that is a 0.05% shrink, so plain LoRA is as good as undecayed; the papers' own recipes set
# theirs (trainers/recipes.py), e.g. 0 for Preserve & Personalize's SD1.5 LoRA.
WEIGHT_DECAY = 0.01
DTYPES = ("fp32", "bf16", "fp16")
# settings that change where training goes; everything else (steps, checkpoint cadence) may differ on resume
_NOT_IN_FINGERPRINT = ("steps", "checkpoint_every")


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: str = "attention"
    learning_rate: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    steps: int = 500
    batch_size: int = 1
    grad_accumulation: int = 1
    optimizer: str = "AdamW"
    weight_decay: float = WEIGHT_DECAY  # AdamW only
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    null_prompt_dropout: float = 0.1
    min_snr_gamma: float = 0.0
    timestep_min: float = 0.0
    timestep_max: float = 1.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0
    # fingerprint of the LoRA training starts from ("" = a fresh LoRA from rank, alpha and targets): a resume
    # must start from the same one
    initial_lora: str = ""

    def problems(self) -> list[str]:
        """Everything wrong with these settings, as messages a user can act on."""
        p = []
        if self.rank < 1:
            p.append(f"rank must be >= 1 (got {self.rank})")
        if self.alpha <= 0:
            p.append(f"alpha must be > 0 (got {self.alpha})")
        if self.targets not in TARGET_PRESETS:
            p.append(f"target layers must be one of {list(TARGET_PRESETS)} (got {self.targets!r})")
        if not self.learning_rate > 0:
            p.append(f"learning rate must be > 0 (got {self.learning_rate})")
        if self.schedule not in SCHEDULES:
            p.append(f"schedule must be one of {list(SCHEDULES)} (got {self.schedule!r})")
        if self.steps < 1:
            p.append(f"steps must be >= 1 (got {self.steps})")
        if self.warmup_steps < 0:
            p.append(f"warm-up steps must be >= 0 (got {self.warmup_steps})")
        if self.batch_size < 1 or self.grad_accumulation < 1:
            p.append("batch size and gradient accumulation must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            p.append(f"optimizer must be one of {list(OPTIMIZERS)} (got {self.optimizer!r})")
        elif missing_package(self.optimizer):
            p.append(missing_package(self.optimizer))
        if self.optimizer == "Prodigy" and not PRODIGY_LR[0] <= self.learning_rate <= PRODIGY_LR[1]:
            p.append(f"Prodigy estimates its own step size and learning_rate multiplies it: use 1.0 (its authors' "
                     f"advice; {PRODIGY_LR[0]:g}-{PRODIGY_LR[1]:g} accepted), not {self.learning_rate:g}")
        if not 0.0 <= self.weight_decay <= 1.0:
            p.append(f"weight decay must be in [0, 1] (got {self.weight_decay})")
        if self.dtype not in DTYPES:
            p.append(f"training dtype must be one of {list(DTYPES)} (got {self.dtype!r})")
        if not 0.0 <= self.null_prompt_dropout <= 1.0:
            p.append(f"null-prompt dropout is a probability in [0, 1] (got {self.null_prompt_dropout})")
        if not 0.0 <= self.timestep_min < self.timestep_max <= 1.0:
            p.append(f"timestep range needs 0 <= min < max <= 1 (got {self.timestep_min}..{self.timestep_max})")
        if self.min_snr_gamma < 0:
            p.append(f"min-SNR gamma must be >= 0 (0 = off; got {self.min_snr_gamma})")
        if self.max_grad_norm < 0:
            p.append(f"gradient clipping norm must be >= 0 (0 = off; got {self.max_grad_norm})")
        if self.checkpoint_every < 0:
            p.append(f"checkpoint every N steps needs N >= 0 (0 = off; got {self.checkpoint_every})")
        return p

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    def as_dict(self) -> dict:
        return asdict(self)

    def effective_weight_decay(self) -> float:
        """The weight decay the optimizer applies: the setting for AdamW, AdamW8bit and Prodigy, 0 for the others."""
        return self.weight_decay if self.optimizer in ("AdamW", "AdamW8bit", "Prodigy") else 0.0

    def fingerprint(self) -> str:
        relevant = {k: v for k, v in sorted(self.as_dict().items()) if k not in _NOT_IN_FINGERPRINT}
        if not self.initial_lora:
            del relevant["initial_lora"]  # states saved before this setting existed keep their fingerprint
        # what the optimizer applies, not the setting (Adam and SGD ignore it); the weight decay every state saved
        # before it was a setting trained with (AdamW 0.01, the others none) leaves their fingerprint as it was
        relevant["weight_decay"] = self.effective_weight_decay()
        if relevant["weight_decay"] == (WEIGHT_DECAY if self.optimizer == "AdamW" else 0.0):
            del relevant["weight_decay"]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
