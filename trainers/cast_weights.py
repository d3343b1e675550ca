"""Base weights cast at each forward keep no cast copy for backward: backward casts them again.

A base stored in a dtype it does not compute in (an fp8 base loaded with UNETLoader's weight_dtype fp8_e4m3fn, a
bf16 base on a device without bf16 compute: ComfyUI's `comfy.ops.manual_cast` layers; layers offloaded under
lowvram) casts each layer's weight to the compute dtype when the layer runs. While a LoRA trains, every layer after
the first LoRA sees an input that requires grad, so autograd keeps the weight the layer multiplied by, the cast
copy, until backward: a fp32 copy of every such weight on a CPU (4 bytes per parameter beside the base's 1 or 2),
as much as the whole base in fp32 (measured on sd15-tiny: 5.4 MiB of copies beside a 1.4 MiB fp8 / 2.8 MiB bf16
base). So an fp8 base saved next to nothing against bf16 while training.

Inside `recast_in_backward` each such Linear / Conv layer runs its own forward (ComfyUI's cast and op, unchanged)
inside an autograd function that records no tensor: its backward casts the weight again the way the forward did
(`comfy.ops.cast_bias_weight`, patches and offloading included; autocast's cast to its dtype after) and returns the
input's gradient, the only one training needs (base weights frozen: grad_x = grad_y · W, or the convolution's input
gradient). The held weights are then the base as stored plus one layer's cast at a time, the same idea as ComfyUI
0.33's own `QuantLinearFunc` for quantized checkpoints. Gradients are computed by the same kernels autograd calls
(mm, convolution_backward), so they equal the plain path's (bit for bit in the tests); the forward is the plain one.

Untouched: layers that compute with their stored weight (an fp32 base on a CPU never reaches this path), layers with
their own cast forward (fp8_ops' scaled matmul, quantized checkpoints), dynamic VRAM's layers (ComfyUI 0.16 on:
they cache their cast weight themselves), a weight or bias that requires grad, and any pass without a graph.
"""

from contextlib import contextmanager

import torch

CAST_KINDS = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def castable_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of `module` whose weight-casting forward can recast in backward: ComfyUI's own Linear / Conv
    layers (`comfy.ops.disable_weight_init` and the manual_cast classes derived from it) with zero padding."""
    import comfy.ops

    plain = {getattr(comfy.ops.disable_weight_init, kind).forward_comfy_cast_weights for kind in CAST_KINDS}
    layers = []
    for layer in module.modules():
        if getattr(type(layer), "forward_comfy_cast_weights", None) not in plain or hasattr(layer, "_v"):
            continue
        if isinstance(layer, torch.nn.modules.conv._ConvNd) and (
                layer.transposed or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
            continue
        layers.append(layer)
    return layers


@contextmanager
def recast_in_backward(module: torch.nn.Module):
    """Within the context, the castable layers of `module` keep no cast weight for backward (module docstring).
    Installed as instance attributes on the loaded model and removed on exit."""
    layers = [layer for layer in castable_layers(module) if "forward_comfy_cast_weights" not in vars(layer)]
    for layer in layers:
        layer.forward_comfy_cast_weights = _recasting(layer, layer.forward_comfy_cast_weights)
    try:
        yield layers
    finally:
        for layer in layers:
            del layer.forward_comfy_cast_weights


def _recasting(layer: torch.nn.Module, forward):
    def forward_comfy_cast_weights(x, *args, **kwargs):
        if (args or kwargs or not torch.is_grad_enabled() or not isinstance(x, torch.Tensor) or not x.requires_grad
                or layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad)):
            return forward(x, *args, **kwargs)
        return _RecastWeight.apply(x, layer, forward)

    return forward_comfy_cast_weights


class _RecastWeight(torch.autograd.Function):
    """y = layer(x) by the layer's own forward; backward: dL/dx with the weight cast again, nothing saved."""

    @staticmethod
    def forward(ctx, x, layer, forward):
        y = forward(x)
        ctx.layer, ctx.x_dtype, ctx.x_shape = layer, x.dtype, x.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        import comfy.ops

        layer = ctx.layer
        weight, bias, offload = comfy.ops.cast_bias_weight(layer, dtype=ctx.x_dtype, device=grad.device, offloadable=True)
        # the forward multiplied in the output's dtype: x's, or autocast's (which cast the cast weight once more)
        w = weight.to(grad.dtype)
        if isinstance(layer, torch.nn.Linear):
            grad_x = grad.reshape(-1, grad.shape[-1]).mm(w).reshape(*grad.shape[:-1], w.shape[-1])
        else:
            dims = w.ndim - 2
            placeholder = grad.new_empty(1).expand(ctx.x_shape)
            grad_x = torch.ops.aten.convolution_backward(
                grad, placeholder, w, None, layer.stride, layer.padding, layer.dilation, False, [0] * dims,
                layer.groups, [True, False, False])[0]
        comfy.ops.uncast_bias_weight(layer, weight, bias, offload)
        return grad_x.to(ctx.x_dtype), None, None
