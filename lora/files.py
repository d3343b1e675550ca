"""LoRA files: ComfyUI-native keys plus metadata saying what the LoRA is and how it was made."""

import json
import pathlib

import torch

from .storage import load_safetensors, safe_path, save_safetensors_atomic

FORMAT = "driftless.lora.v1"
# a PEFT save_pretrained folder: the weights and, beside them, the adapter config
PEFT_WEIGHTS_NAME, PEFT_CONFIG_NAME = "adapter_model.safetensors", "adapter_config.json"


class NonFiniteLora(ValueError):
    """A LoRA holding NaN or Inf: sampling with it gives black images, training from it fails at once."""


def non_finite_tensors(tensors: dict) -> list[str]:
    """The keys of `tensors` whose floating-point values are not all finite, in key order."""
    return [key for key in sorted(tensors) if isinstance(tensors[key], torch.Tensor)
            and tensors[key].is_floating_point() and not bool(torch.isfinite(tensors[key]).all())]


def check_finite(tensors: dict, what: str) -> None:
    """Refuse a LoRA holding NaN or Inf, naming it (`what`: a file or the input it came through) and a layer."""
    bad = non_finite_tensors(tensors)
    if not bad:
        return
    first = tensors[bad[0]]
    count = int((~torch.isfinite(first)).sum())
    raise NonFiniteLora(
        f"{what} holds NaN or Inf in {len(bad)} of its {len(tensors)} tensors (first: {bad[0]}, {count} of "
        f"{first.numel()} values): samples with it are black and training cannot start from it. It comes from a "
        "diverged training run (learning rate too high, or fp16 overflow): use an earlier checkpoint of that run, "
        "or train it again with a lower learning rate or in bf16/fp32"
    )


class LoraWeights(dict):
    """A LORA_MODEL (dict of tensors, what stock nodes pass around) that also carries its metadata.

    `metadata` is stored as JSON values; `raw_metadata` holds entries other tools read as plain strings
    (diffusers' adapter config, kohya's ss_* fields), written as they are.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict | None = None,
                 raw_metadata: dict[str, str] | None = None):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})
        self.raw_metadata = dict(raw_metadata or {})


def lora_metadata(config, base_fingerprint: str, steps: int, captions: list[str], regularizers: list,
                  adapter=None) -> dict:
    """What a LoRA file says about itself. Started from another LoRA, rank, alpha and layers are that LoRA's."""
    initial = bool(getattr(config, "initial_lora", "")) and adapter is not None
    extra = {"initial_lora": config.initial_lora} if initial else {}
    return {
        "format": FORMAT,
        "base_model_fingerprint": base_fingerprint,
        "rank": adapter.rank if initial else config.rank,
        "alpha": adapter.alpha_value if initial else config.alpha,
        "target_layers": "those of the initial LoRA" if initial else config.targets,
        **extra,
        "steps": steps,
        "prompts": sorted(set(captions)),
        "regularizers": [{"name": r.name, **r.settings()} for r in regularizers],
        "training": config.as_dict(),
    }


def save_lora(lora: dict[str, torch.Tensor], folder, name: str, extra_metadata: dict | None = None) -> pathlib.Path:
    """Atomically write `lora` to folder/name.safetensors; returns the path written. A LoRA holding NaN or Inf
    is refused (NonFiniteLora) and nothing is written."""
    path = safe_path(folder, name, ".safetensors")
    check_finite(lora, f"the LoRA to be written to {path}")  # nothing is written
    metadata = {**getattr(lora, "metadata", {}), **(extra_metadata or {})}
    save_safetensors_atomic(dict(lora), path, metadata, getattr(lora, "raw_metadata", None))
    return path


def load_lora(path) -> LoraWeights:
    """Tensors and metadata (JSON values decoded, other strings as they are) of a LoRA file; one holding NaN or
    Inf is refused (NonFiniteLora, naming the file and a layer).

    A PEFT `save_pretrained` folder keeps its adapter config beside the weights: for a file named
    adapter_model.safetensors, an adapter_config.json next to it is read into metadata["adapter_config"].
    """
    path = pathlib.Path(path)
    tensors, raw = load_safetensors(path)
    check_finite(tensors, f"LoRA file {path}")
    metadata = {}
    for key, value in raw.items():
        try:
            metadata[key] = json.loads(value)
        except (TypeError, ValueError):
            metadata[key] = value
    sidecar = path.with_name(PEFT_CONFIG_NAME)
    if path.name == PEFT_WEIGHTS_NAME and sidecar.is_file() and "adapter_config" not in metadata:
        try:
            metadata["adapter_config"] = json.loads(sidecar.read_text())
        except ValueError as e:
            raise ValueError(f"{sidecar} is not valid JSON ({e}); fix or remove it") from None
    return LoraWeights(tensors, metadata)
