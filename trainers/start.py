"""Where training starts: a fresh LoRA, the LoRA given to Train LoRA's `initial_lora` input, or the LoRA a
regularizer asks for (continual learning continues from the previous concept's). The given LoRA is converted
to ComfyUI-native keys once, in `InitialLora.of`, and carried with its fingerprint from there on.
"""

import dataclasses
from dataclasses import dataclass

import torch

from ..lora.adapter import LoraAdapter
from .config import TrainConfig
from .regularizers import Regularizer


@dataclass(frozen=True)
class InitialLora:
    """A LoRA to start training from: ComfyUI-native weights for one model, and their fingerprint."""

    weights: dict[str, torch.Tensor]
    fingerprint: str

    @classmethod
    def of(cls, model_patcher, lora: dict) -> "InitialLora":
        """`lora` in any format the pack reads (ComfyUI-native, diffusers/PEFT, kohya), converted for this model."""
        from ..lora.files import check_finite
        from ..lora.fingerprint import lora_fingerprint
        from ..lora.formats import to_native
        from ..lora.formats.layout import layout_of

        check_finite(lora, "the LoRA at Train LoRA's initial_lora input")  # not the learning rate's fault
        try:
            native = to_native(lora, layout_of(model_patcher))
        except ValueError as e:
            raise ValueError(f"initial_lora {e}") from None
        return cls(native, lora_fingerprint(native))


def with_initial_lora(config: TrainConfig, initial: InitialLora) -> TrainConfig:
    """`config` recording which LoRA training starts from (its fingerprint, checked on resume)."""
    if config.initial_lora and config.initial_lora != initial.fingerprint:
        raise ValueError(f"the settings name initial LoRA {config.initial_lora} but the LoRA given is {initial.fingerprint}")
    return dataclasses.replace(config, initial_lora=initial.fingerprint)


def check_no_regularizer_start(regularizers: list[Regularizer], config, base_fingerprint: str) -> None:
    """An `initial_lora` input and a regularizer that gives the LoRA to start from cannot both be obeyed."""
    given = [r.name for r in regularizers if r.initial_lora(config, base_fingerprint) is not None]
    if given:
        raise ValueError(
            f"both the initial_lora input and {given} give a LoRA to start from: disconnect initial_lora "
            "(continual training starts from the pool's last concept) or remove that regularizer"
        )


def start_from_initial_lora(adapter: LoraAdapter, regularizers: list[Regularizer], config, base_fingerprint: str) -> None:
    """Load the LoRA a regularizer asks the run to start from (continual learning: the previous concept's)."""
    given = [(r, state) for r in regularizers if (state := r.initial_lora(config, base_fingerprint)) is not None]
    if len(given) > 1:
        raise ValueError(f"regularizers {[r.name for r, _ in given]} each give a LoRA to start from; chain at most one of them")
    if not given:
        return
    regularizer, state = given[0]
    ours = adapter.lora_state_dict()
    mismatch = sorted(set(ours) ^ set(state)) or [k for k in ours if tuple(ours[k].shape) != tuple(state[k].shape)]
    if not mismatch:
        mismatch = [k for k in ours if k.endswith(".alpha") and float(ours[k]) != float(state[k])]
    if mismatch:
        rank = next((int(v.shape[0]) for k, v in state.items() if k.endswith(".lora_down.weight")), "?")
        raise ValueError(
            f"{regularizer.name}: the LoRA to start from (rank {rank}, {sum(k.endswith('.lora_down.weight') for k in state)} "
            f"layers) does not fit this run's LoRA (rank {config.rank}, alpha {config.alpha:g}, target layers "
            f"{config.targets!r}; first difference: {mismatch[0]}): train with the same rank, alpha and target layers"
        )
    adapter.load_lora_state_dict(state)
