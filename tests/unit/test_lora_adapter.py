"""LoRA on activations equals the merged weight W + s·(α/r)·B·A, for Linear and Conv2d layers."""

import pytest
import torch

from driftless.lora.adapter import LoraAdapter, check_rank


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.proj = torch.nn.Linear(8, 6)

    def forward(self, x):
        h = self.conv(x)  # [B, 8, h, w]
        return self.proj(h.mean(dim=(2, 3)))


def _adapter(net, rank=2, alpha=3.0, seed=0):
    targets = {"conv": net.conv, "proj": net.proj}
    adapter = LoraAdapter(targets, rank, alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers:  # non-zero B so the LoRA changes the output
            layer.down.copy_(torch.randn(layer.down.shape, generator=g))
            layer.up.copy_(torch.randn(layer.up.shape, generator=g))
    return adapter


def _merged(net, adapter, strength):
    merged = Net()
    merged.load_state_dict(net.state_dict())
    with torch.no_grad():
        for name, layer in zip(adapter.names, adapter.layers):
            module = getattr(merged, name)
            delta = (layer.up.flatten(1) @ layer.down.flatten(1)).reshape(module.weight.shape)
            module.weight += strength * (adapter.alpha_value / adapter.rank) * delta
    return merged


@pytest.mark.parametrize("strength", [1.0, 0.3])
def test_matches_the_merged_weight(strength):
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 3, 9, 9)
    adapter = _adapter(net)
    adapter.strength = strength
    adapter.install(net)
    got = net(x)
    adapter.remove()
    want = _merged(net, adapter, strength)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_strength_zero_is_bit_exact_and_removal_restores_the_module():
    torch.manual_seed(1)
    net, x = Net(), torch.randn(2, 3, 8, 8)
    base = net(x)
    adapter = _adapter(net)
    adapter.install(net)
    adapter.strength = 0.0
    assert torch.equal(net(x), base)
    adapter.strength = 1.0
    assert not torch.allclose(net(x), base)
    adapter.remove()
    assert torch.equal(net(x), base)


def test_per_sample_strength_equals_separate_forwards():
    torch.manual_seed(2)
    net, x = Net(), torch.randn(2, 3, 8, 8)
    adapter = _adapter(net)
    adapter.install(net)
    adapter.strength = torch.tensor([1.0, 0.25])
    batched = net(x)
    singles = []
    for i, s in enumerate((1.0, 0.25)):
        adapter.strength = s
        singles.append(net(x[i : i + 1]))
    torch.testing.assert_close(batched, torch.cat(singles), rtol=1e-6, atol=1e-6)  # batching rounding only
    adapter.strength = torch.tensor([1.0, 0.5, 0.2])
    with pytest.raises(RuntimeError, match="3 entries for a batch of 2"):
        net(x)


@pytest.mark.parametrize("strengths", [[0.0, -0.7, 0.0], [0.5, 0.5, 0.0], [0.0, 0.4, -0.2], [0.0, 0.0, 0.0],
                                       [-0.5, 0.0, 0.8], [0.3, 0.3, 0.3]])
def test_per_sample_corrections_touch_only_their_samples(strengths):
    """Sampling path: samples at strength 0 are the base forward bit for bit, the others equal the merged
    weight at their strength; with grad on, the result equals the out-of-place form."""
    torch.manual_seed(3)
    net, x = Net(), torch.randn(3, 3, 8, 8)
    adapter = _adapter(net)
    base = net(x).detach()
    adapter.install(net)
    adapter.strength = torch.tensor(strengths)
    with torch.no_grad():
        got = net(x)
    for i, s in enumerate(strengths):
        if s == 0.0:
            assert torch.equal(got[i], base[i])
        want = _merged(net, adapter, s)(x[i : i + 1])[0]
        torch.testing.assert_close(got[i], want, rtol=0, atol=1e-5)
    with_grad = net(x)
    torch.testing.assert_close(with_grad, got, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # a changed alpha is seen by the next forward (the cached α/r follows the buffer)
        for layer in adapter.layers:
            layer.alpha.mul_(2)
        doubled = net(x)
    for i, s in enumerate(strengths):
        torch.testing.assert_close(doubled[i], _merged(net, adapter, 2 * s)(x[i : i + 1])[0], rtol=0, atol=1e-5)


def test_gradients_reach_only_the_lora_and_match_the_merged_form():
    torch.manual_seed(3)
    net, x = Net(), torch.randn(2, 3, 8, 8)
    for p in net.parameters():
        p.requires_grad_(False)
    adapter = _adapter(net)
    adapter.install(net)
    net(x).square().sum().backward()
    grads = {n: (l.down.grad.clone(), l.up.grad.clone()) for n, l in zip(adapter.names, adapter.layers)}
    # the same loss through W + (α/r)·B·A built with autograd
    adapter.remove()
    for layer in adapter.layers:
        layer.down.grad = layer.up.grad = None
    scale = adapter.alpha_value / adapter.rank
    h = torch.nn.functional.conv2d(
        x, net.conv.weight + scale * (adapter.layers[0].up.flatten(1) @ adapter.layers[0].down.flatten(1)).reshape(net.conv.weight.shape),
        net.conv.bias, stride=2, padding=1,
    )
    out = torch.nn.functional.linear(h.mean(dim=(2, 3)), net.proj.weight + scale * adapter.layers[1].up @ adapter.layers[1].down, net.proj.bias)
    out.square().sum().backward()
    for name, layer in zip(adapter.names, adapter.layers):
        torch.testing.assert_close(grads[name][0], layer.down.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[name][1], layer.up.grad, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in net.parameters())


def test_init_starts_from_the_base_model_and_is_seeded():
    net = Net()
    a = LoraAdapter({"conv": net.conv, "proj": net.proj}, 2, 2.0)
    b = LoraAdapter({"conv": net.conv, "proj": net.proj}, 2, 2.0)
    for adapter in (a, b):
        g = torch.Generator().manual_seed(5)
        for layer in adapter.layers:
            layer.reset(g)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.down, lb.down) and torch.count_nonzero(la.down) > 0
        assert torch.count_nonzero(la.up) == 0  # B = 0: the LoRA starts as the identity


def test_state_dict_uses_comfyui_native_keys_and_round_trips():
    net = Net()
    adapter = _adapter(net, rank=2, alpha=3.0)
    sd = adapter.lora_state_dict()
    assert set(sd) == {
        f"diffusion_model.{n}.{k}" for n in ("conv", "proj") for k in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert sd["diffusion_model.conv.lora_down.weight"].shape == (2, 3, 3, 3)
    assert sd["diffusion_model.conv.lora_up.weight"].shape == (8, 2, 1, 1)
    assert float(sd["diffusion_model.proj.alpha"]) == 3.0
    fresh = LoraAdapter({"conv": net.conv, "proj": net.proj}, 2, 3.0)
    fresh.load_lora_state_dict(sd)
    for la, lb in zip(adapter.layers, fresh.layers):
        assert torch.equal(la.down, lb.down) and torch.equal(la.up, lb.up)


def test_rank_larger_than_a_layer_is_refused():
    net = Net()
    check_rank({"proj": net.proj}, 6)
    with pytest.raises(ValueError, match=r"rank 7 is larger than layer proj allows \(min\(in, out\) = 6\)"):
        check_rank({"proj": net.proj}, 7)
    with pytest.raises(ValueError, match="at least 1"):
        check_rank({"proj": net.proj}, 0)


def test_rebuild_from_a_saved_state_dict():
    """A LoRA file's tensors become an adapter on the same model: same layers, rank, alpha and output."""
    torch.manual_seed(4)
    net, x = Net(), torch.randn(2, 3, 8, 8)
    adapter = _adapter(net, rank=2, alpha=3.0)
    adapter.install(net)
    want = net(x)
    adapter.remove()
    rebuilt = LoraAdapter.from_state_dict(net, adapter.lora_state_dict())
    assert rebuilt.names == sorted(adapter.names) and rebuilt.rank == 2 and rebuilt.alpha_value == 3.0
    rebuilt.install(net)
    assert torch.equal(net(x), want)
    rebuilt.remove()
    with pytest.raises(ValueError, match="does not fit this model: 0 of 1 LoRA layers match"):
        LoraAdapter.from_state_dict(torch.nn.Sequential(torch.nn.Linear(2, 2)), {
            "diffusion_model.missing.lora_down.weight": torch.zeros(1, 2), "diffusion_model.missing.lora_up.weight": torch.zeros(2, 1)})


def test_rebuild_with_a_rank_and_an_alpha_per_layer():
    """LoRAs made elsewhere often have one rank for linear layers and another for convolutions."""
    torch.manual_seed(5)
    net, x = Net(), torch.randn(2, 3, 8, 8)
    g = torch.Generator().manual_seed(6)
    state = {
        "diffusion_model.conv.lora_down.weight": torch.randn(3, 3, 3, 3, generator=g),
        "diffusion_model.conv.lora_up.weight": torch.randn(8, 3, 1, 1, generator=g),
        "diffusion_model.conv.alpha": torch.tensor(1.5),
        "diffusion_model.proj.lora_down.weight": torch.randn(2, 8, generator=g),
        "diffusion_model.proj.lora_up.weight": torch.randn(6, 2, generator=g),  # no alpha: alpha = rank
    }
    adapter = LoraAdapter.from_state_dict(net, state)
    assert adapter.ranks == {"conv": 3, "proj": 2}
    adapter.install(net)
    got = net(x)
    adapter.remove()
    merged = Net()
    merged.load_state_dict(net.state_dict())
    with torch.no_grad():
        merged.conv.weight += 1.5 / 3 * (state["diffusion_model.conv.lora_up.weight"].flatten(1)
                                         @ state["diffusion_model.conv.lora_down.weight"].flatten(1)).reshape(8, 3, 3, 3)
        merged.proj.weight += 2 / 2 * state["diffusion_model.proj.lora_up.weight"] @ state["diffusion_model.proj.lora_down.weight"]
    torch.testing.assert_close(got, merged(x), rtol=0, atol=1e-5)
    assert float(adapter.lora_state_dict()["diffusion_model.proj.alpha"]) == 2.0


def test_corrections_work_on_an_adapter_made_under_inference_mode():
    """ComfyUI runs nodes under torch.inference_mode: an adapter built there has inference-tensor buffers
    (no version counter), and a reloaded alpha is still seen by the next forward."""
    torch.manual_seed(5)
    net, x = Net(), torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        adapter = _adapter(net)
        adapter.install(net)
        adapter.strength = torch.tensor([0.0, -0.5])
        got = net(x)
        torch.testing.assert_close(got[1], _merged(net, adapter, -0.5)(x[1:])[0], rtol=0, atol=1e-5)
        state = adapter.lora_state_dict()
        for key in [k for k in state if k.endswith(".alpha")]:
            state[key] = state[key] * 2
        adapter.load_lora_state_dict(state)
        torch.testing.assert_close(net(x)[1], _merged(net, adapter, -1.0)(x[1:])[0], rtol=0, atol=1e-5)
