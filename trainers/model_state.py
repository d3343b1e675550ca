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
    one tensor at most; the model computes bit-identical outputs afterwards. Under dynamic VRAM (ComfyUI 0.16 on)
    the weights a forward computes with are GPU copies that a layer keeps between forwards: those made while
    sampling are dropped too, so the next forward casts them again (comfy_host.forget_cast_weights). Returns the
    count of tensors re-created.
    """
    from ..comfy_host import forget_cast_weights

    forget_cast_weights(module)
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
    """No gradients for the base weights while training (restored afterwards): only the LoRA learns.

    ComfyUI is told it is training meanwhile (`comfy_training`): every pass that backpropagates through the
    model (the training loop, continual learning's Fisher) runs inside this context."""
    changed = [p for p in module.parameters() if p.requires_grad]
    for p in changed:
        p.requires_grad_(False)
    try:
        with comfy_training():
            yield
    finally:
        for p in changed:
            if not p.is_inference():  # a flag on an inference tensor cannot be set back, nor does it matter
                p.requires_grad_(True)


@contextmanager
def comfy_training():
    """Set ComfyUI's own training switch, `comfy.model_management.in_training`, as its TrainLoraNode does; restored
    afterwards. From 0.33 on, Flux attention applies RoPE with comfy_kitchen's fused kernel, which has no backward
    ("no autograd formula was registered"), unless the switch is on. Releases without the switch: nothing to do."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    previous, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = previous


@contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool):
    """Recompute each block in backward instead of storing its activations (Chen et al. 2016, "Training Deep Nets
    with Sublinear Memory Cost"): the UNet's layers (res block, transformer, up/downsampler), the DiTs' transformer
    blocks (SD3 joint blocks, Flux double- and single-stream blocks); lora/targets.py lists them per family.

    Every block but the last to run: backward starts with it, so recomputing it would hold its activations at the
    same moment as storing them does (a checkpointed backward's peak is the blocks' inputs plus one block's
    activations), for the cost of one more block forward.

    Flux's blocks add into the tensors they are given (`img += …`): each checkpointed call hands its block copies
    of its tensor inputs, made inside the recomputed region, so the recomputation reads the inputs as they were.
    Installed on the loaded model only for the duration of training and removed in `finally`.
    """
    from ..lora.targets import checkpoint_blocks

    blocks, updates_inputs = checkpoint_blocks(diffusion_model) if enabled else ([], False)
    blocks = blocks[:-1]  # in the order they run (checkpoint_blocks)
    for block in blocks:
        original = block.forward
        recomputed = _fresh_inputs(original) if updates_inputs else original

        def checkpointed(*args, _original=original, _recomputed=recomputed, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_recomputed, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


def _fresh_inputs(forward):
    """`forward` called on copies of its floating-point tensor arguments (the caller's tensors stay as they were)."""

    def copy(value):
        return value.clone() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def call(*args, **kwargs):
        return forward(*[copy(a) for a in args], **{k: copy(v) for k, v in kwargs.items()})

    return call


def outside_inference_mode(method):
    """The executor runs nodes under inference_mode; tensors that autograd sees must be made outside it."""

    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return method(*args, **kwargs)

    return wrapper
