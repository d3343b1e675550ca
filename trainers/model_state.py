"""The state of the model being trained: leaving ComfyUI's inference mode, freezing the base weights, and
gradient checkpointing. Each is undone on exit, so the graph's MODEL is as it was once training ends.
"""

from contextlib import contextmanager

import torch


def release_inference_tensors(module: torch.nn.Module) -> int:
    """Re-create parameters and buffers that are inference tensors as ordinary tensors, same values.

    ComfyUI builds and loads models inside torch.inference_mode, and autograd refuses to save an
    inference tensor for backward (the base weights are needed for the input gradients that reach
    the LoRA). Each tensor is copied and the original dropped one at a time, so the extra memory is
    one tensor at most; the model computes bit-identical outputs afterwards. Returns the count.
    """
    count = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    count += 1
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
                    count += 1
    return count


@contextmanager
def frozen_base(module: torch.nn.Module):
    """No gradients for the base weights while training (restored afterwards): only the LoRA learns."""
    changed = [p for p in module.parameters() if p.requires_grad]
    for p in changed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in changed:
            if not p.is_inference():  # a flag on an inference tensor cannot be set back, nor does it matter
                p.requires_grad_(True)


@contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool):
    """Recompute each UNet layer (res block, transformer, up/downsampler) in backward instead of storing its activations.

    Installed on the loaded model only for the duration of training and removed in `finally`.
    """
    blocks = []
    if enabled:
        stages = list(getattr(diffusion_model, "input_blocks", [])) + list(getattr(diffusion_model, "output_blocks", []))
        if hasattr(diffusion_model, "middle_block"):
            stages.append(diffusion_model.middle_block)
        for stage in stages:
            # the UNet iterates its stages' layers itself (forward_timestep_embed): wrap those layers
            is_container = isinstance(stage, (torch.nn.Sequential, torch.nn.ModuleList))
            blocks += list(stage.children()) if is_container else [stage]
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


def outside_inference_mode(method):
    """The executor runs nodes under inference_mode; tensors that autograd sees must be made outside it."""

    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return method(*args, **kwargs)

    return wrapper
