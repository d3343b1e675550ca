"""Regularizer math on small tensors against hand computations."""

import math

import pytest
import torch

from driftless.trainers.lora_adapter import LoraAdapter
from driftless.trainers.regularizers import REGULARIZERS, StepContext, chain
from driftless.trainers.regularizers.dco import DCO, dco_loss
from driftless.trainers.regularizers.parameter_anchor import ParameterAnchor, delta_norm_squared


def _adapter(seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = {"lin": torch.nn.Linear(5, 7), "conv": torch.nn.Conv2d(3, 4, 3, padding=1)}
    adapter = LoraAdapter(targets, rank=2, alpha=3.0)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.down.copy_(torch.randn(layer.down.shape, generator=g))
            layer.up.copy_(torch.randn(layer.up.shape, generator=g))
    return adapter


def _ctx(adapter=None, **kw):
    base = dict(x0=torch.zeros(1), noise=None, sigma=None, x_t=None, inputs={}, prediction=None, target=None,
                weight=None, denoising_loss=torch.tensor(0.0), adapter=adapter, step=0)
    return StepContext(**{**base, **kw})


@pytest.mark.parametrize("shape_down, shape_up", [((2, 5), (7, 2)), ((2, 3, 3, 3), (4, 2, 1, 1))])
def test_delta_norm_without_materializing_equals_the_materialized_norm(shape_down, shape_up):
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(shape_down, generator=g), torch.randn(shape_up, generator=g)
    materialized = (1.5 * up.flatten(1) @ down.flatten(1)).square().sum()
    torch.testing.assert_close(delta_norm_squared(down, up, 1.5), materialized, rtol=1e-5, atol=1e-5)


def test_parameter_anchor_both_forms_by_hand():
    adapter = _adapter()
    scale = 3.0 / 2
    by_hand_paper = sum((scale * l.up.flatten(1) @ l.down.flatten(1)).square().sum() for l in adapter.layers)
    by_hand_code = sum(l.down.square().sum() + l.up.square().sum() for l in adapter.layers)
    torch.testing.assert_close(ParameterAnchor(0.1, "paper").loss(_ctx(adapter)), 0.1 * by_hand_paper, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ParameterAnchor(2.0, "code").loss(_ctx(adapter)), 2.0 * by_hand_code, rtol=1e-6, atol=1e-6)


def test_parameter_anchor_gradients_reach_only_the_lora():
    adapter = _adapter()
    ParameterAnchor(1.0).loss(_ctx(adapter)).backward()
    assert all(l.down.grad is not None and l.up.grad is not None for l in adapter.layers)
    # d/dB ‖s·B·A‖² = 2 s² B A Aᵀ
    layer = adapter.layers[0]
    expected = 2 * (1.5**2) * layer.up.detach() @ layer.down.detach() @ layer.down.detach().T
    torch.testing.assert_close(layer.up.grad, expected, rtol=1e-5, atol=1e-5)


def test_dco_by_hand():
    target = torch.zeros(1, 2)
    prediction = torch.tensor([[1.0, 0.0]])  # mean squared error 0.5
    frozen = torch.tensor([[0.0, math.sqrt(0.6)]])  # 0.3
    want = math.log1p(math.exp(2.0 * 0.2))  # −log σ(−β(0.5 − 0.3)) with β = 2
    assert dco_loss(prediction, frozen, target, beta=2.0).item() == pytest.approx(want, rel=1e-6)
    reg = DCO(beta=2.0, weight=3.0, mode="add")
    ctx = _ctx(prediction=prediction, target=target, _frozen=lambda: frozen)
    assert reg.loss(ctx).item() == pytest.approx(3 * want, rel=1e-6)
    assert not reg.replaces_denoising_loss and DCO(mode="replace").replaces_denoising_loss


def test_frozen_prediction_is_computed_once_per_step():
    calls = []
    ctx = _ctx(_frozen=lambda: calls.append(1) or torch.ones(1))
    for _ in range(3):
        ctx.frozen_prediction
    assert len(calls) == 1


def test_registry_and_chaining():
    assert {"parameter_anchor", "dco", "prior_preservation"} <= set(REGULARIZERS)
    a, b = ParameterAnchor(0.1), DCO()
    assert chain(chain(None, a), b) == [a, b]
    with pytest.raises(ValueError, match="form must be one of"):
        ParameterAnchor(1.0, "other")
    with pytest.raises(ValueError, match="beta > 0"):
        DCO(beta=0)
