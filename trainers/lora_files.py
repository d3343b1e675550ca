"""LoRA files: ComfyUI-native keys plus metadata saying what the LoRA is and how it was made."""

import json
import pathlib

import torch

from .storage import load_safetensors, safe_path, save_safetensors_atomic

FORMAT = "driftless.lora.v1"


class LoraWeights(dict):
    """A LORA_MODEL (dict of tensors, what stock nodes pass around) that also carries its metadata."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})


def lora_metadata(config, base_fingerprint: str, steps: int, captions: list[str], regularizers: list) -> dict:
    return {
        "format": FORMAT,
        "base_model_fingerprint": base_fingerprint,
        "rank": config.rank,
        "alpha": config.alpha,
        "target_layers": config.targets,
        "steps": steps,
        "prompts": sorted(set(captions)),
        "regularizers": [{"name": r.name, **r.settings()} for r in regularizers],
        "training": config.as_dict(),
    }


def save_lora(lora: dict[str, torch.Tensor], folder, name: str, extra_metadata: dict | None = None) -> pathlib.Path:
    """Atomically write `lora` to folder/name.safetensors; returns the path written."""
    path = safe_path(folder, name, ".safetensors")
    metadata = {**getattr(lora, "metadata", {}), **(extra_metadata or {})}
    save_safetensors_atomic(dict(lora), path, metadata)
    return path


def load_lora(path) -> LoraWeights:
    tensors, raw = load_safetensors(path)
    metadata = {}
    for key, value in raw.items():
        try:
            metadata[key] = json.loads(value)
        except (TypeError, ValueError):
            metadata[key] = value
    return LoraWeights(tensors, metadata)
