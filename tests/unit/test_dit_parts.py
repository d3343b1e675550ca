"""The family table and the adapter's in-place guard on toy modules named like ComfyUI's (no ComfyUI needed).

A toy `Flux` whose blocks do what ComfyUI's DoubleStreamBlock does, `img += proj(norm(img))`, shows the bug (a LoRA
upstream makes autograd's saved norm input be overwritten) and its fix: with the adapter installed, the LoRA
gradients equal those of the same network written out-of-place with the LoRA merged into the weights.
"""

import pytest
import torch

from driftless.lora.adapter import GUARD, LoraAdapter
from driftless.lora.targets import FAMILIES, checkpoint_blocks, family_of, inplace_input_modules, select_targets



class Block(torch.nn.Module):
    """Two residual updates in place, each reading the stream through a norm first (Flux's double-stream shape)."""

    def __init__(self, width):
        super().__init__()
        self.img_norm1 = torch.nn.LayerNorm(width, elementwise_affine=False)
        self.img_attn = torch.nn.Module()
        self.img_attn.qkv = torch.nn.Linear(width, width)
        self.img_attn.proj = torch.nn.Linear(width, width)
        self.img_norm2 = torch.nn.LayerNorm(width, elementwise_affine=False)
        self.img_mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width))

    def forward(self, img, in_place=True):
        update = self.img_attn.proj(torch.tanh(self.img_attn.qkv(self.img_norm1(img))))
        img = img.add_(update) if in_place else img + update
        update = self.img_mlp(self.img_norm2(img))
        return img.add_(update) if in_place else img + update


class Flux(torch.nn.Module):  # named as ComfyUI's comfy.ldm.flux.model.Flux: the table recognises the class name
    def __init__(self, width=8, depth=2):
        super().__init__()
        self.img_in = torch.nn.Linear(4, width)
        self.double_blocks = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.single_blocks = torch.nn.ModuleList()
        self.final_layer = torch.nn.Linear(width, 4)

    def forward(self, x, in_place=True):
        img = self.img_in(x)
        for block in self.double_blocks:
            img = block(img, in_place)
        return self.final_layer(img)


def _lora(net, preset="attention+ff"):
    g = torch.Generator().manual_seed(0)
    adapter = LoraAdapter.for_model(net, preset, 2, 4.0, g)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.up.copy_(0.3 * torch.randn(layer.up.shape, generator=g))
    return adapter


def _net():
    torch.manual_seed(0)
    net = Flux()
    net.requires_grad_(False)
    return net


def test_family_table_recognises_the_toy_as_flux_and_selects_its_layers():
    net = _net()
    assert family_of(net) is FAMILIES["flux"]
    assert set(select_targets(net, "attention")) == {f"double_blocks.{i}.img_attn.{p}" for i in (0, 1) for p in ("qkv", "proj")}
    assert "img_in" not in select_targets(net, "all linear+conv")
    assert len(inplace_input_modules(net)) == 4  # img_norm1, img_norm2 of each block
    blocks, updates_inputs = checkpoint_blocks(net)
    assert blocks == list(net.double_blocks) and updates_inputs


def test_without_the_guard_the_in_place_add_breaks_backward():
    net, x = _net(), torch.randn(3, 5, 4)
    adapter = _lora(net)
    handles = [dict(net.named_modules())[n].register_forward_hook(adapter._hook(layer))
               for n, layer in zip(adapter.names, adapter.layers)]  # the layer hooks alone, no guard
    try:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            net(x).square().mean().backward()
    finally:
        for handle in handles:
            handle.remove()


def test_guarded_gradient_equals_the_out_of_place_merged_gradient():
    net, x = _net(), torch.randn(3, 5, 4)
    adapter = _lora(net)
    adapter.install(net)
    net(x).square().mean().backward()
    adapter.remove()
    ours = [(layer.down.grad, layer.up.grad) for layer in adapter.layers]

    modules = dict(net.named_modules())
    leaves = [(layer.down.detach().clone().requires_grad_(), layer.up.detach().clone().requires_grad_())
              for layer in adapter.layers]
    originals = {name: modules[name]._parameters.pop("weight") for name in adapter.names}
    for name, layer, (down, up) in zip(adapter.names, adapter.layers, leaves):
        modules[name].weight = originals[name] + layer.scale_value() * (up @ down)  # W + (alpha/r)·B·A
    net(x, in_place=False).square().mean().backward()
    for a, b in zip(ours, leaves):
        torch.testing.assert_close(a[0], b[0].grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a[1], b[1].grad, rtol=1e-6, atol=1e-7)
    assert not any(GUARD in vars(m) for m in net.modules())


def test_the_guard_copies_nothing_without_a_graph():
    """Sampling (no grad) reads the tensor itself: the guard costs no copy there."""
    net = _net()
    adapter = _lora(net)
    adapter.install(net)
    seen = []
    norm = net.double_blocks[0].img_norm2
    probe = norm.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            img = net.img_in(torch.randn(1, 5, 4))
            net.double_blocks[0](img)
    finally:
        probe.remove()
        adapter.remove()
    assert seen[0] is img  # the in-place stream itself, not a copy
