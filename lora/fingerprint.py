"""A cheap, stable identity for a diffusion model's weights: which base a LoRA or a state belongs to."""

import hashlib

import torch

PATCH_PREFIX = "diffusion_model."  # ModelPatcher.patches keys: the BaseModel's, the diffusion model under this


def model_fingerprint(diffusion_model: torch.nn.Module, samples_per_tensor: int = 16) -> str:
    """sha256 over every parameter's name, shape and dtype plus a strided sample of its values.

    Reads a few values per tensor rather than every byte, so it takes milliseconds on a 2.6 B
    parameter SDXL UNet, yet two checkpoints that differ anywhere but in a handful of entries of a
    tensor get different fingerprints. Any LoRA attached through hooks does not change it.
    """
    return _state_fingerprint(diffusion_model.state_dict(), samples_per_tensor)


def _state_fingerprint(state: dict[str, torch.Tensor], samples_per_tensor: int = 16) -> str:
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // samples_per_tensor)
            h.update(flat[::step][:samples_per_tensor].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def patcher_fingerprint(model_patcher) -> str:
    """The fingerprint of the weights a ComfyUI MODEL runs with, its weight patches (a merged LoRA) included.

    ComfyUI's clones of one model share its modules, whose weights carry the patches of whichever clone was
    loaded last (a guider's merged LoRA, say) until another clone is loaded. So the MODEL is made the loaded
    one first, as sampling or training it would: its own patches applied, any other clone's taken off. With
    dynamic VRAM (ComfyUI 0.16 on) the patches are applied as each weight is cast for the forward, not in place:
    the patched weights are then computed (comfy_host.loaded_weight), so the fingerprint is the same either way.
    """
    import comfy.model_management

    from ..comfy_host import is_dynamic, loaded_weight

    comfy.model_management.load_models_gpu([model_patcher])
    state = model_patcher.model.diffusion_model.state_dict()
    if is_dynamic(model_patcher):
        for key in model_patcher.patches:
            if key.startswith(PATCH_PREFIX) and key[len(PATCH_PREFIX):] in state:
                state[key[len(PATCH_PREFIX):]] = loaded_weight(model_patcher, key)
    return _state_fingerprint(state)


def lora_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every key, shape and value of a LoRA (small enough to read whole)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
