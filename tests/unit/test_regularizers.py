"""Regularizer math on small tensors against hand computations."""

import math

import pytest
import torch

from driftless.lora.adapter import LoraAdapter
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
    base = dict(x0=torch.zeros(1), u=torch.zeros(1), noise=None, sigma=None, x_t=None, inputs={}, prediction=None, target=None,
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
    torch.testing.assert_close(ParameterAnchor(weight=0.1, form="paper").loss(_ctx(adapter)), 0.1 * by_hand_paper, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ParameterAnchor(weight=2.0, form="code").loss(_ctx(adapter)), 2.0 * by_hand_code, rtol=1e-6, atol=1e-6)


def _by_hand(adapter, form):
    """The anchor term written per layer, as the paper and the official code state it (autograd-ready)."""
    if form == "paper":
        return sum((1.5 * l.up.flatten(1) @ l.down.flatten(1)).square().sum() for l in adapter.layers)
    return sum(l.down.square().sum() + l.up.square().sum() for l in adapter.layers)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_parameter_anchor_adds_the_gradient_of_its_term_to_the_lora_alone(form):
    """Closed-form gradients equal autograd's of the by-hand term, scaled (fp16 loss scale) and added to what the
    backward left; the value carries no graph, so the term is not counted twice."""
    reference, adapter = _adapter(), _adapter()
    (0.3 * _by_hand(reference, form)).backward()
    anchor = ParameterAnchor(weight=0.3, form=form)
    assert not anchor.loss(_ctx(adapter)).requires_grad
    anchor.add_parameter_gradients(adapter)  # no gradient yet: made
    for got, want in zip(adapter.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)
    # d/dB ‖s·B·A‖² = 2 s² B A Aᵀ, for the first (linear) layer
    if form == "paper":
        layer = adapter.layers[0]
        expected = 0.3 * 2 * (1.5**2) * layer.up.detach() @ layer.down.detach() @ layer.down.detach().T
        torch.testing.assert_close(layer.up.grad, expected, rtol=1e-5, atol=1e-5)
    before = [p.grad.clone() for p in adapter.parameters()]
    anchor.add_parameter_gradients(adapter, scale=8.0)
    for p, b, want in zip(adapter.parameters(), before, reference.parameters()):
        torch.testing.assert_close(p.grad, b + 8.0 * want.grad, rtol=1e-5, atol=1e-5)


def test_parameter_anchor_groups_follow_a_changed_alpha():
    adapter = _adapter()
    anchor = ParameterAnchor(weight=1.0)
    first = anchor.value(adapter)
    with torch.no_grad():
        adapter.layers[0].alpha.fill_(6.0)  # that layer's α/r goes 1.5 → 3: its ‖ΔW‖² is 4 times larger
    adapter.layers[0]._scale_cache = None
    layer = adapter.layers[0]
    own = (1.5 * layer.up.flatten(1) @ layer.down.flatten(1)).square().sum()
    torch.testing.assert_close(anchor.value(adapter), first + 3 * own, rtol=1e-5, atol=1e-5)


def test_dco_by_hand():
    target = torch.zeros(1, 2)
    prediction = torch.tensor([[1.0, 0.0]])  # mean squared error 0.5
    frozen = torch.tensor([[0.0, math.sqrt(0.6)]])  # 0.3
    want = math.log1p(math.exp(2.0 * 0.2))  # −log σ(−β(0.5 − 0.3)) with β = 2
    assert dco_loss(prediction, frozen, target, beta=2.0).item() == pytest.approx(want, rel=1e-6)
    reg = DCO(beta=2.0, weight=3.0, mode="add")
    ctx = _ctx(prediction=prediction, target=target, frozen=frozen)
    assert reg.loss(ctx).item() == pytest.approx(3 * want, rel=1e-6)
    assert not reg.replaces_denoising_loss and DCO(mode="replace").replaces_denoising_loss


def test_dco_weights_both_errors_per_sample_as_the_official_code_does_with_min_snr():
    """Official customize.py, snr_gamma set: per-sample mean squared error × its min-SNR weight, batch mean, for the
    LoRA's error and the reference's alike. Two samples: errors 0.5 and 2.0 (LoRA), 0.3 and 1.0 (base), weights 2, 0.5."""
    target = torch.zeros(2, 2)
    prediction = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # per-sample means 0.5, 2.0
    frozen = torch.tensor([[0.0, math.sqrt(0.6)], [0.0, math.sqrt(2.0)]])  # 0.3, 1.0
    weight = torch.tensor([2.0, 0.5])
    model_error, reference_error = (2 * 0.5 + 0.5 * 2.0) / 2, (2 * 0.3 + 0.5 * 1.0) / 2  # 1.0, 0.55
    want = math.log1p(math.exp(2.0 * (model_error - reference_error)))
    assert dco_loss(prediction, frozen, target, beta=2.0, weight=weight).item() == pytest.approx(want, rel=1e-6)
    ctx = _ctx(prediction=prediction, target=target, frozen=frozen, weight=weight)
    assert DCO(beta=2.0).loss(ctx).item() == pytest.approx(want, rel=1e-6)
    # weights all 1 (min-SNR off): the batch means of the paper's form
    unweighted = math.log1p(math.exp(2.0 * ((0.5 + 2.0) / 2 - (0.3 + 1.0) / 2)))
    assert dco_loss(prediction, frozen, target, beta=2.0, weight=torch.ones(2)).item() == pytest.approx(unweighted, rel=1e-6)


def test_reading_the_frozen_prediction_without_a_frozen_forward_says_what_to_set():
    with pytest.raises(RuntimeError, match="needs_frozen_prediction = True"):
        _ctx().frozen_prediction


def test_registry_and_chaining():
    assert {"parameter_anchor", "dco", "prior_preservation"} <= set(REGULARIZERS)
    a, b = ParameterAnchor(weight=0.1), DCO()
    assert chain(chain(None, a), b) == [a, b]
    with pytest.raises(ValueError, match="form must be one of"):
        ParameterAnchor(weight=1.0, form="other")
    with pytest.raises(ValueError, match=r"beta must be in \[1, 100000\]"):
        DCO(beta=0)


def test_apt_indicator_follows_the_formula_on_a_synthetic_sequence():
    from driftless.trainers.regularizers.apt import OverfitIndicator

    ind = OverfitIndicator(bins=10, ema=0.1, temperature=1000.0)
    bins = torch.tensor([3])
    assert ind.gamma(bins).item() == 0.0  # unseen bin
    pre, theta = [0.50, 0.50, 0.50], [0.50, 0.499, 0.497]
    m_pre, m_theta = pre[0], theta[0]  # first observation initializes
    ind.update(bins, torch.tensor([pre[0]]), torch.tensor([theta[0]]))
    for p, t in zip(pre[1:], theta[1:]):
        ind.update(bins, torch.tensor([p]), torch.tensor([t]))
        m_pre, m_theta = 0.9 * m_pre + 0.1 * p, 0.9 * m_theta + 0.1 * t
    want = 1 - math.exp(-1000 * (m_pre - m_theta))
    assert ind.gamma(bins).item() == pytest.approx(want, rel=1e-5)
    assert ind.gamma(torch.tensor([4])).item() == 0.0  # other bins untouched
    ind.update(torch.tensor([5]), torch.tensor([0.1]), torch.tensor([0.9]))  # base better than LoRA: γ clamps to 0
    assert ind.gamma(torch.tensor([5])).item() == 0.0
    assert torch.equal(ind.bin_of(torch.tensor([0.0, 0.35, 0.999])), torch.tensor([0, 3, 9]))


def test_apt_relative_indicator_is_the_share_of_the_base_loss_gained():
    """gap "relative": γ = 1 − exp(−T·(m_pre − m_θ)/m_pre); the same share gives the same γ whatever the loss scale
    (a bin at loss 0.5 and one at 0.005, both 20% below the base), where the absolute gap gives 1 − e^(−T·0.1) and
    1 − e^(−T·0.001)."""
    from driftless.trainers.regularizers.apt import OverfitIndicator

    ind = OverfitIndicator(bins=2, ema=0.1, temperature=2.0, gap="relative")
    ind.update(torch.tensor([0, 1]), torch.tensor([0.5, 0.005]), torch.tensor([0.4, 0.004]))
    want = 1 - math.exp(-2.0 * 0.2)
    torch.testing.assert_close(ind.gamma(torch.tensor([0, 1])), torch.tensor([want, want]), rtol=1e-5, atol=0)
    absolute = OverfitIndicator(bins=2, ema=0.1, temperature=2.0)
    absolute.update(torch.tensor([0, 1]), torch.tensor([0.5, 0.005]), torch.tensor([0.4, 0.004]))
    torch.testing.assert_close(absolute.gamma(torch.tensor([0, 1])),
                               torch.tensor([1 - math.exp(-0.2), 1 - math.exp(-0.002)]), rtol=1e-5, atol=0)
    ind.update(torch.tensor([1]), torch.tensor([0.001]), torch.tensor([0.002]))  # one step where the LoRA does worse
    m_pre, m_theta = 0.9 * 0.005 + 0.1 * 0.001, 0.9 * 0.004 + 0.1 * 0.002
    assert ind.gamma(torch.tensor([1])).item() == pytest.approx(1 - math.exp(-2.0 * (m_pre - m_theta) / m_pre), rel=1e-5)


@pytest.mark.parametrize("stack_bytes", [8 << 20, 1])  # the layers of a shape in one stack, or one at a time
def test_apt_representation_and_attention_terms_by_hand(monkeypatch, stack_bytes):
    """RS and AA on captured tensors of several layers and shapes (layers sharing a shape, as layers of one UNet
    resolution do), written per layer by hand: values and the gradients that reach the trained side; the trained
    forward's extra examples (after the first n) are ignored."""
    from driftless.trainers.regularizers import apt as apt_module
    from driftless.trainers.regularizers.apt import APT

    monkeypatch.setattr(apt_module, "STACK_BYTES", stack_bytes)

    g = torch.Generator().manual_seed(3)
    n, layers, queries = 2, ((16, 6), (4, 12), (16, 6), (9, 6), (16, 6)), (16, 4, 9)

    def captured(batch, grad):
        features = [torch.randn(batch, tokens, c, generator=g).mul(1 + i).add(i).requires_grad_(grad)
                    for i, (tokens, c) in enumerate(layers)]
        maps = [torch.rand(batch, q, 5, generator=g).requires_grad_(grad) for q in queries]
        return {"features": features, "maps": maps}

    train, frozen = captured(n + 1, True), captured(n, False)
    apt = APT(adaptive_adjustment=False, representation_weight=0.3, attention_weight=2.0)
    apt.captured = {"train": dict(train), "frozen": dict(frozen)}
    apt.end_pass("frozen")  # the frozen features become statistics as the frozen forward ends
    got = apt.loss(_ctx(x0=torch.zeros(n, 4, 2, 2), frozen=torch.zeros(n, 4, 2, 2)))

    def mean_std(x):  # per sample and channel, over tokens, population std: written out
        mean = x.sum(dim=1) / x.shape[1]
        return mean, ((x - mean[:, None]) ** 2).sum(dim=1).div(x.shape[1]).sqrt()

    rs = 0
    for t, r in zip(train["features"], frozen["features"]):
        (mt, st), (mr, sr) = mean_std(t[:n]), mean_std(r)
        rs = rs + ((mt - mr) ** 2).mean() + ((st - sr) ** 2).mean()
    aa = sum(((a[:n] - b) ** 2).mean() for a, b in zip(train["maps"], frozen["maps"])) / len(queries)
    want = 0.3 * rs + 2.0 * aa
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    leaves = train["features"] + train["maps"]
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert got.item() > 0.1


def test_stacked_channel_stats_gradient_in_the_features_dtype():
    """The custom backward (deviations recomputed from the kept features) equals autograd through the two-pass
    formula, for float32 features and, to bf16's precision, for bf16 ones, whose gradients come back in bf16."""
    from driftless.trainers.regularizers.apt import StackedChannelStats, channel_stats

    g = torch.Generator().manual_seed(11)
    weights = torch.randn(2, 3, 2, 8, generator=g)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        features = [(torch.randn(2, 50, 8, generator=g) * 2 + 3).to(dtype).requires_grad_() for _ in range(3)]
        mean, std = StackedChannelStats.apply(*features)
        ours = torch.autograd.grad((mean * weights[0] + std * weights[1]).sum(), features)
        leaves = [f.detach().float().requires_grad_() for f in features]
        ref_mean, ref_std = channel_stats(torch.stack(leaves))
        ref = torch.autograd.grad((ref_mean * weights[0] + ref_std * weights[1]).sum(), leaves)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(std, ref_std, rtol=1e-6, atol=1e-6)
        for a, b in zip(ours, ref):
            assert a.dtype == dtype
            torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol * 1e-2)


def test_apt_representation_refuses_forwards_that_differ():
    from driftless.trainers.regularizers.apt import grouped_channel_stats, representation_distance

    a, b = torch.randn(1, 4, 3), torch.randn(1, 4, 5)
    with pytest.raises(RuntimeError, match="2× \\[1, 4, 3\\].*1× \\[1, 4, 3\\].*forwards differ"):
        representation_distance(grouped_channel_stats([a, a]), grouped_channel_stats([a]))
    with pytest.raises(RuntimeError, match="forwards differ"):
        representation_distance(grouped_channel_stats([a]), grouped_channel_stats([b]))
    with pytest.raises(RuntimeError, match="than in the frozen one \\(none\\)"):
        representation_distance(grouped_channel_stats([a]), {})


def test_apt_augmentation_identity_and_probability():
    from driftless.trainers.regularizers.apt import APT, zoom_out_rotate

    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(zoom_out_rotate(x, torch.ones(2), torch.zeros(2)), x, rtol=0, atol=1e-6)
    shrunk = zoom_out_rotate(x, torch.full((2,), 2.0), torch.zeros(2))
    assert not torch.allclose(shrunk, x)
    g = torch.Generator().manual_seed(0)
    u = torch.full((2,), 0.35)
    # the paper's form as reported (absolute gap, T = 1000): γ ≈ 1, so p = p_max = 0.8 and the loss weight 0
    # the default (relative gap, T = 0.3): the LoRA at loss 0 against the base's 1 has r = 1, γ = 1 − exp(−0.3)
    for settings, p, weight in ((dict(indicator_gap="absolute", temperature=1000.0), 0.8, 0.0),
                                ({}, 1 - math.exp(-0.3), math.exp(-0.3))):
        apt = APT(p_max=0.8, adaptive_adjustment=True, **settings)
        assert torch.equal(apt.augment(x, u, g), x)  # γ = 0 before any observation: never augmented
        apt.indicator.update(apt.indicator.bin_of(u), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]))
        out = torch.stack([apt.augment(x[:1], u[:1], g)[0] for _ in range(400)])
        augmented = (out - x[0]).abs().flatten(1).amax(1) > 1e-4
        assert abs(augmented.float().mean().item() - p) < 0.08  # p = min(γ, p_max); 3 standard errors of 400 draws
        torch.testing.assert_close(apt.denoising_weight(u), torch.full((2,), weight), rtol=0, atol=1e-6)  # 1 − γ


def test_apt_zoom_out_shrinks_one_picture_and_fills_the_border_with_the_background():
    """A centred square of side 16 on a 32×32 background, zoomed out 2×: one square of side 8, still centred
    (pixels 12-19, exact: each output pixel reads the midpoint of two input pixels), every other pixel the
    background (no mirrored copies); each channel keeps its own background."""
    from driftless.trainers.regularizers.apt import zoom_out_rotate

    background = torch.tensor([0.5, -1.0, 2.0])
    x = background.view(1, 3, 1, 1).repeat(1, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 3.0
    want = background.view(1, 3, 1, 1).repeat(1, 1, 32, 32)
    want[:, :, 12:20, 12:20] = 3.0
    got = zoom_out_rotate(x, torch.tensor([2.0]), torch.tensor([0.0]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert int((got[0, 0] > 2.0).sum()) == 8 * 8  # one square of half the side, not a 3×3 grid of them
    # a given constant fills the border instead: outside the shrunk picture (pixels 8-23) only
    filled = zoom_out_rotate(x, torch.tensor([2.0]), torch.tensor([0.0]), fill=torch.zeros(1, 3))
    torch.testing.assert_close(filled[:, :, :7], torch.zeros(1, 3, 7, 32), rtol=0, atol=1e-6)
    torch.testing.assert_close(filled[:, :, 9:23, 9], background.view(1, 3, 1).expand(1, 3, 14), rtol=0, atol=1e-5)
    torch.testing.assert_close(filled[:, :, 12:20, 12:20], torch.full((1, 3, 8, 8), 3.0), rtol=0, atol=1e-5)


def test_apt_rotation_fills_the_uncovered_corners_with_the_background():
    """Turned 45° without zoom, the corners fall outside the picture and take the mean of its outer ring (here a
    ring of two values); a quarter turn of a centred square gives the same picture."""
    from driftless.trainers.regularizers.apt import border_fill, zoom_out_rotate

    x = torch.zeros(1, 1, 16, 16)
    x[..., :, :8] = 1.0  # left half 1, right half 0: the ring's mean is 0.5
    assert border_fill(x).item() == pytest.approx(0.5)
    got = zoom_out_rotate(x, torch.tensor([1.0]), torch.tensor([45.0]))
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert got[0, 0][corner].item() == pytest.approx(0.5, abs=1e-6)
    square = torch.zeros(1, 1, 16, 16)
    square[..., 4:12, 4:12] = 1.0
    torch.testing.assert_close(zoom_out_rotate(square, torch.tensor([1.0]), torch.tensor([90.0])), square,
                               rtol=0, atol=1e-5)


def test_attention_probabilities_by_hand():
    from driftless.trainers.regularizers.apt import attention_probabilities, channel_stats

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 5, 8, generator=g), torch.randn(1, 3, 8, generator=g)  # 2 heads of width 4
    probs = attention_probabilities(q, k, heads=2)
    for h in range(2):
        qh, kh = q[0, :, 4 * h : 4 * h + 4], k[0, :, 4 * h : 4 * h + 4]
        torch.testing.assert_close(probs[0, h], torch.softmax(qh @ kh.T / 2.0, dim=-1))
    features = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])  # [B=1, N=2, C=2]
    mean, std = channel_stats(features)
    assert mean.tolist() == [[2.0, 4.0]] and std.tolist() == [[1.0, 2.0]]


def test_apt_channel_stats_match_torch_std_mean_in_value_and_gradient():
    """The two-pass statistics (mean, then root mean squared deviation) equal torch.std_mean's, gradient included,
    also for channels whose mean is far from 0 next to their spread."""
    from driftless.trainers.regularizers.apt import channel_stats

    g = torch.Generator().manual_seed(5)
    features = (torch.randn(2, 300, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16, dtype=torch.float64)
                + torch.linspace(-50, 50, 16, dtype=torch.float64)).requires_grad_()
    mean, std = channel_stats(features)
    ref_std, ref_mean = torch.std_mean(features.float(), dim=1, correction=0)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(std, ref_std, rtol=1e-5, atol=1e-6)
    weights = torch.randn(2, 2, 16, generator=g)
    ours = torch.autograd.grad((mean * weights[0] + std * weights[1]).sum(), features)[0]
    ref = torch.autograd.grad((ref_mean * weights[0] + ref_std * weights[1]).sum(), features)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_apt_cross_attention_matches_sdpa_in_value_and_gradient():
    """The output equals torch's scaled_dot_product_attention per head (value and gradient), and the map is the
    head mean of softmax(QKᵀ/√d)."""
    import torch.nn.functional as F

    from driftless.trainers.regularizers.apt import attention_probabilities, attention_with_map

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, n, 12, generator=g, requires_grad=True) for n in (6, 5, 5))
    heads = 3
    out, attention_map = attention_with_map(q, k, v, heads)
    split = lambda t: t.view(2, t.shape[1], heads, 4).transpose(1, 2)  # noqa: E731
    reference = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(2, 6, 12)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    weights = torch.randn(2, 6, 12, generator=g)
    for a, b in zip(torch.autograd.grad((out * weights).sum(), (q, k, v)),
                    torch.autograd.grad((reference * weights).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    scores = torch.einsum("bhqd,bhkd->bhqk", split(q), split(k)) / 2.0  # √d = 2
    torch.testing.assert_close(attention_map, scores.softmax(-1).mean(dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(attention_map, attention_probabilities(q, k, heads).mean(dim=1))


def test_parameter_anchor_of_an_adapter_without_layers_is_zero():
    empty = LoraAdapter({}, rank=2, alpha=3.0)
    anchor = ParameterAnchor(weight=1.0)
    assert anchor.loss(_ctx(empty)).item() == 0.0
    anchor.add_parameter_gradients(empty)  # nothing to add to, and no error


# ---- each method's settings, defined once (trainers/regularizers/knobs.py) -----------------------------------------

def _config_classes() -> dict:
    """Registered name -> the config class defined in that method's module."""
    import sys

    from driftless.trainers.regularizers.knobs import MethodConfig

    out = {}
    for name, cls in REGULARIZERS.items():
        module = vars(sys.modules[cls.__module__]).values()
        found = [v for v in module if isinstance(v, type) and issubclass(v, MethodConfig) and v is not MethodConfig]
        assert len(found) == 1, f"{cls.__module__} defines {len(found)} configs, not one"
        out[name] = found[0]
    return out


def _built_without_settings(name: str):
    """Each registered class built with its data only (no settings)."""
    from driftless.trainers.continual.pool import ConceptPool

    data = {"prior_preservation": (torch.zeros(1, 4, 8, 8), None, "a photo of a dog"),
            "continual": (ConceptPool("base", "EWC-DC", "a photo"), [], None)}
    return REGULARIZERS[name](*data.get(name, ()))


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_each_method_defines_its_settings_once(name):
    """A frozen config whose docstring explains every field, each field a knob with help and a range holding its
    default; the class built without settings has exactly the config's defaults, and records them."""
    import dataclasses

    from driftless.trainers.regularizers.knobs import knobs

    config_class = _config_classes()[name]
    assert dataclasses.is_dataclass(config_class) and config_class.__dataclass_params__.frozen
    assert "(" in config_class.__doc__.splitlines()[0], "the docstring's first line cites the paper"
    for field, knob in knobs(config_class).items():
        assert f"{field}:" in config_class.__doc__, f"{config_class.__name__}'s docstring does not explain {field}"
        assert knob.help
        if knob.options is None and not isinstance(knob.default, bool):
            assert knob.min <= knob.default <= knob.max, field
            assert isinstance(knob.default, int) or knob.step is not None, field
        elif knob.options is not None:
            assert knob.default in knob.options
    regularizer = _built_without_settings(name)
    assert regularizer.config == config_class()
    recorded = regularizer.settings()
    assert all(recorded[k] == v for k, v in config_class().as_dict().items() if k in recorded)


def test_settings_are_checked_converted_and_overridden_by_name():
    import dataclasses

    from driftless.trainers.regularizers.apt import APT, APTConfig
    from driftless.trainers.regularizers.dco import DCOConfig

    assert DCO(beta=250).config == DCO(DCOConfig(beta=250.0)).config == DCOConfig(beta=250.0)
    assert type(DCO(beta=250).beta) is float and type(APT(bins=2.0).config.bins) is int
    assert DCO(DCOConfig(mode="add"), weight=0.5).config == DCOConfig(weight=0.5, mode="add")  # overrides a given config
    with pytest.raises(ValueError, match=r"APT: bins must be in \[1, 100\], got 0"):
        APTConfig(bins=0)
    with pytest.raises(ValueError, match="APT: p_max"):
        APT(p_max=1.5)
    with pytest.raises(TypeError):
        APT(betta=1.0)  # a misspelt setting is not silently ignored
    with pytest.raises(TypeError, match="expected a ParameterAnchorConfig"):
        ParameterAnchor(DCOConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        DCOConfig().beta = 2.0


# ---- APT on DiTs: the image-query × text-key block of a joint attention (trainers/regularizers/dit.py) ------------

def _joint_map_by_hand(q, k, text, image, bias=None, per_head_maps=False):
    """softmax over all keys written out per sample and head, then the image rows × text columns, head mean (or
    every head's)."""
    b, heads, _, d = q.shape
    rows = []
    for i in range(b):
        per_head = []
        for h in range(heads):
            logits = q[i, h] @ k[i, h].T / math.sqrt(d)
            if bias is not None:
                logits = logits + bias[min(i, bias.shape[0] - 1), min(h, bias.shape[1] - 1)]
            weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
            per_head.append((weights / weights.sum(dim=-1, keepdim=True))[image][:, text])
        rows.append(torch.stack(per_head) if per_head_maps else torch.stack(per_head).mean(dim=0))
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_bytes", [32 << 20, 1])  # every query in one chunk, or one query at a time
@pytest.mark.parametrize("text_first", [True, False])  # SD3 and Flux put the text first; a flipped Flux block last
def test_joint_text_map_by_hand(monkeypatch, chunk_bytes, text_first):
    """The map and its gradients equal the softmax over all keys written out, restricted to image queries × text
    keys and averaged over heads, in both of ComfyUI's q/k layouts ([B, H, N, d] with skip_reshape, as Flux passes
    them, and [B, N, H·d], as SD3 does); the rows sum to the attention paid to the text (< 1)."""
    from driftless.trainers.regularizers import dit

    monkeypatch.setattr(dit, "JOINT_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(6)
    b, heads, d, n_txt, n_img = 2, 3, 4, 5, 7
    text, image = (slice(0, n_txt), slice(n_txt, n_txt + n_img)) if text_first else \
        (slice(n_img, n_img + n_txt), slice(0, n_img))
    q, k = (torch.randn(b, heads, n_txt + n_img, d, generator=g, requires_grad=True) for _ in range(2))
    got = dit.joint_text_map(q, k, heads, True, text, image)
    want = _joint_map_by_hand(q, k, text, image)
    assert got.shape == (b, n_img, n_txt) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert float(got.detach().sum(-1).max()) < 1 and float(got.detach().sum(-1).min()) > 0
    weights = torch.randn(b, n_img, n_txt, generator=g)
    for a, c in zip(torch.autograd.grad((got * weights).sum(), (q, k)), torch.autograd.grad((want * weights).sum(), (q, k))):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    flat = lambda t: t.transpose(1, 2).reshape(b, n_txt + n_img, heads * d)  # noqa: E731
    torch.testing.assert_close(dit.joint_text_map(flat(q), flat(k), heads, False, text, image), got, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_bytes", [32 << 20, 1])
def test_joint_text_map_per_head_by_hand(monkeypatch, chunk_bytes):
    """Every head's map [B, H, N_img, N_txt] and its gradients, against the softmax written out; its head mean is the
    default map; float64 gradcheck of the per-head backward."""
    from driftless.trainers.regularizers import dit

    monkeypatch.setattr(dit, "JOINT_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(8)
    b, heads, d, n_txt, n_img = 2, 3, 4, 5, 7
    text, image = slice(0, n_txt), slice(n_txt, n_txt + n_img)
    q, k = (torch.randn(b, heads, n_txt + n_img, d, generator=g, requires_grad=True) for _ in range(2))
    got = dit.joint_text_map(q, k, heads, True, text, image, per_head=True)
    want = _joint_map_by_hand(q, k, text, image, per_head_maps=True)
    assert got.shape == (b, heads, n_img, n_txt)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.mean(dim=1), dit.joint_text_map(q, k, heads, True, text, image), rtol=1e-6, atol=1e-7)
    weights = torch.randn(b, heads, n_img, n_txt, generator=g)
    for a, c in zip(torch.autograd.grad((got * weights).sum(), (q, k)), torch.autograd.grad((want * weights).sum(), (q, k))):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    q64, k64 = (t.detach().double()[:1, :2, :6].requires_grad_() for t in (q, k))
    assert torch.autograd.gradcheck(lambda q, k: dit.joint_text_map(q, k, 2, True, slice(0, 2), slice(2, 6), per_head=True),
                                    (q64, k64))


def test_apt_per_head_attention_alignment_sees_heads_that_trade_attention():
    """Two heads whose maps the LoRA model swapped: their head mean is the base model's, so the default term is 0;
    per head it is mean((P − Q)²), written out. The UNet capture keeps every head's softmax in that mode."""
    from driftless.trainers.regularizers.apt import APT, attention_probabilities

    g = torch.Generator().manual_seed(9)
    p, q = torch.softmax(torch.randn(1, 6, 4, generator=g), -1), torch.softmax(torch.randn(1, 6, 4, generator=g), -1)
    trained, frozen = torch.stack([p, q], dim=1), torch.stack([q, p], dim=1)  # [B, H, Nq, Nk]
    ctx = _ctx(x0=torch.zeros(1, 4, 2, 2), frozen=torch.zeros(1, 4, 2, 2))

    def term(apt, a, b):
        apt.captured = {"train": {"features": [], "maps": [a], "stats": {}}, "frozen": {"features": [], "maps": [b], "stats": {}}}
        return apt.loss(ctx).item()

    mean_apt = APT(adaptive_adjustment=False, representation_weight=0.0, attention_weight=10.0)
    assert term(mean_apt, trained.mean(1), frozen.mean(1)) == pytest.approx(0.0, abs=1e-12)
    head_apt = APT(adaptive_adjustment=False, representation_weight=0.0, attention_weight=10.0, attention_maps="per head")
    assert term(head_apt, trained, frozen) == pytest.approx(10.0 * float((p - q).square().mean()), rel=1e-6)
    qq, kk, vv = (torch.randn(1, 5, 8, generator=g) for _ in range(3))
    head_apt.captured = {"train": {"features": [], "maps": [], "stats": {}}}
    out = head_apt._cross_attention(qq, kk, vv, {"n_heads": 2})
    torch.testing.assert_close(head_apt.captured["train"]["maps"][0], attention_probabilities(qq, kk, 2))
    assert out.shape == (1, 5, 8)


def test_joint_text_map_gradcheck_and_masks(monkeypatch):
    """float64 gradcheck of the chunked backward (chunks of two queries); a boolean mask (True attends) and a float
    mask (added to the logits) act as ComfyUI's attention functions apply them."""
    from driftless.trainers.regularizers import dit

    g = torch.Generator().manual_seed(7)
    b, heads, d, n_txt, n_img = 1, 2, 3, 4, 5
    n = n_txt + n_img
    monkeypatch.setattr(dit, "JOINT_CHUNK_BYTES", 2 * b * heads * n * 4)
    text, image = slice(0, n_txt), slice(n_txt, n)
    q, k = (torch.randn(b, heads, n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda q, k: dit.joint_text_map(q, k, heads, True, text, image), (q, k))
    keep = torch.rand(b, n, n, generator=g) > 0.3
    keep[..., 0] = True  # every query attends somewhere
    bias = torch.zeros(b, 1, n, n, dtype=torch.float64).masked_fill(~keep[:, None], float("-inf"))
    torch.testing.assert_close(dit.joint_text_map(q, k, heads, True, text, image, mask=keep),
                               _joint_map_by_hand(q, k, text, image, bias))
    additive = torch.randn(n, n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(dit.joint_text_map(q, k, heads, True, text, image, mask=additive),
                               _joint_map_by_hand(q, k, text, image, additive[None, None]))
    assert torch.autograd.gradcheck(lambda q, k: dit.joint_text_map(q, k, heads, True, text, image, mask=additive), (q, k))


def test_joint_text_map_of_bf16_inputs_under_autocast_is_float32_with_bf16_gradients():
    from driftless.trainers.regularizers import dit

    g = torch.Generator().manual_seed(8)
    q, k = (torch.randn(1, 2, 9, 4, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in bf16 training: the map's arithmetic stays float32
        got = dit.joint_text_map(q, k, 2, True, slice(0, 4), slice(4, 9))
        grads = torch.autograd.grad(got.sum(), (q, k))
    want = _joint_map_by_hand(q.detach().float(), k.detach().float(), slice(0, 4), slice(4, 9))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert all(grad.dtype == torch.bfloat16 for grad in grads)


def test_cross_attention_probabilities_under_autocast_are_float32():
    """The UNet's map, as the DiT's: float32 logits in bf16 training (bf16 rounds them by ~1e-2)."""
    from driftless.trainers.regularizers.apt import attention_probabilities

    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(1, 6, 8, generator=g).to(torch.bfloat16), torch.randn(1, 5, 8, generator=g).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention_probabilities(q, k, heads=2)
    torch.testing.assert_close(got, attention_probabilities(q.float(), k.float(), heads=2), rtol=1e-6, atol=1e-7)
