"""The lighter optimizers: Prodigy against the paper's recurrence, optimizer state saved and restored bit for bit,
and refusals that say what to install."""

import importlib.util
import math
import types

import pytest
import torch

from driftless.trainers import optimizers
from driftless.trainers.config import TrainConfig
from driftless.trainers.optimizers import PRODIGY, make_optimizer
from driftless.trainers.state import ResumeState, save_state


def _prodigy_by_hand(x0: torch.Tensor, grad, steps: int, lr: float, bias_correction: bool, safeguard: bool):
    """Prodigy's Adam variant (Mishchenko & Defazio 2024) for one tensor, written from the paper's recurrence:
    m ← β₁m + (1−β₁)d g, v ← β₂v + (1−β₂)d² g², r ← √β₂ r + λ d²⟨g, x₀ − x⟩, s ← √β₂ s + λ d² g,
    d ← max(d, r/‖s‖₁), x ← x − λ d m/(√v + d ε), with no weight decay. (1−√β₂) is left out of r and s as it cancels in
    r/‖s‖₁. README options: bias correction multiplies λ by √(1−β₂^{k+1})/(1−β₁^{k+1}); the safeguard leaves λ out of
    s. The package adds ε times the updated d, so this does too. Returns (x, d) after each step."""
    b1, b2 = PRODIGY["betas"]  # (0.9, 0.99)
    b3, eps, d = math.sqrt(b2), 1e-8, PRODIGY["d0"]
    x, m, v, s, r = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0), torch.zeros_like(x0), 0.0
    out = []
    for k in range(steps):
        g = grad(x)
        step_lr = lr * (math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if bias_correction else 1.0)
        r = b3 * r + step_lr * d * d * float(torch.dot(g, x0 - x))
        s = b3 * s + (1.0 if safeguard else step_lr) * d * d * g
        m = b1 * m + (1 - b1) * d * g
        v = b2 * v + (1 - b2) * d * d * g * g
        d_next = max(d, r / float(s.abs().sum()))
        x = x - step_lr * d * m / (v.sqrt() + d_next * eps)
        d = d_next
        out.append((x.clone(), d))
    return out


@pytest.mark.parametrize("bias_correction,safeguard", [(False, False), (True, True)])
def test_prodigy_follows_the_papers_recurrence(bias_correction, safeguard):
    """On a quadratic in float64, prodigyopt's d and iterates equal the recurrence written out by hand, in the paper's
    form (no bias correction, no safeguard) and with the settings Train LoRA uses; d grows from d0 as it should."""
    prodigyopt = pytest.importorskip("prodigyopt", reason="prodigyopt is not installed (pip install prodigyopt)")
    target = torch.linspace(-1, 2, 16, dtype=torch.float64)
    grad = lambda x: 2 * (x - target)  # noqa: E731
    x0 = torch.zeros(16, dtype=torch.float64) + 0.1
    expected = _prodigy_by_hand(x0, grad, 60, 1.0, bias_correction, safeguard)

    p = torch.nn.Parameter(x0.clone())
    settings = {**PRODIGY, "use_bias_correction": bias_correction, "safeguard_warmup": safeguard}
    opt = prodigyopt.Prodigy([p], lr=1.0, weight_decay=0.0, **settings)
    for x_hand, d_hand in expected:
        p.grad = grad(p.detach())
        opt.step()
        torch.testing.assert_close(p.detach(), x_hand, rtol=1e-12, atol=1e-15)
        assert opt.param_groups[0]["d"] == pytest.approx(d_hand, rel=1e-12)
    assert expected[-1][1] > 1e4 * PRODIGY["d0"]  # d found its scale (~0.3 on this quadratic) within 60 steps
    assert optimizers.log_values(opt) == {"prodigy_d": opt.param_groups[0]["d"]}


class _Stub:
    """The parts of a run save_state reads besides the optimizer."""

    def __init__(self):
        self.config = TrainConfig()

    def kwargs(self, optimizer):
        adapter = types.SimpleNamespace(lora_state_dict=lambda: {"x.lora_up.weight": torch.zeros(2, 2)})
        stream = types.SimpleNamespace(state=lambda: {"order": torch.arange(3)})
        return dict(adapter=adapter, optimizer=optimizer, stream=stream, generator=torch.Generator().manual_seed(0),
                    step=3, config=self.config, base_fingerprint="0" * 16, losses=[1.0, 0.5, 0.25])


def _params():
    g = torch.Generator().manual_seed(0)
    # 8192 and 5000 elements: bitsandbytes quantizes their moments to 8 bits (with one quantization map, shared);
    # 24: it keeps them in 32 bits (under min_8bit_size)
    return [torch.nn.Parameter(torch.randn(64, 128, generator=g)), torch.nn.Parameter(torch.randn(50, 100, generator=g)),
            torch.nn.Parameter(torch.randn(4, 6, generator=g))]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in params]


def _step(optimizer, params, seed):
    for p, grad in zip(params, _grads(params, seed)):
        p.grad = grad
    optimizer.step()


def _assert_same_state(a, b):
    """Optimizer state_dicts equal bit for bit (tensors with torch.equal and the same dtype; everything else ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b.to(a.device))
    elif isinstance(a, dict):
        assert set(a) == set(b), (set(a), set(b))
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    else:
        assert a == b, (a, b)


@pytest.mark.parametrize("name", ["AdamW", "AdamW8bit", "Prodigy"])
def test_optimizer_state_survives_the_state_file_bit_for_bit(name, tmp_path):
    """3 steps, save, load into a fresh optimizer: the state is the same bit for bit, and the next 2 steps give the
    same parameters as the optimizer that never stopped (8-bit AdamW: one tensor with 8-bit moments, one with 32)."""
    if name in optimizers.NEEDS and optimizers.missing_package(name):
        pytest.skip(optimizers.missing_package(name))
    lr = 1.0 if name == "Prodigy" else 1e-2
    params = _params()
    straight = make_optimizer(name, params, lr)
    for seed in range(3):
        _step(straight, params, seed)
    if name == "AdamW8bit":
        state = straight.state[params[0]]
        assert state["state1"].dtype == torch.uint8 and straight.state[params[2]]["state1"].dtype == torch.float32
        assert state["qmap1"] is straight.state[params[1]]["qmap1"]
    save_state(tmp_path / "s.train-state", **_Stub().kwargs(straight))

    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = make_optimizer(name, copies, lr)
    resumed.load_state_dict(ResumeState(tmp_path / "s.train-state").optimizer_state())
    _assert_same_state(straight.state_dict(), resumed.state_dict())
    for seed in (3, 4):
        _step(straight, params, seed)
        _step(resumed, copies, seed)
    for a, b in zip(params, copies):
        assert torch.equal(a, b)
    _assert_same_state(straight.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("name,module", [("AdamW8bit", "bitsandbytes"), ("Prodigy", "prodigyopt")])
def test_missing_package_is_refused_with_the_install_line(name, module, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    lr = 1.0 if name == "Prodigy" else 1e-4
    problems = TrainConfig(optimizer=name, learning_rate=lr).problems()
    assert problems == [f"optimizer {name} needs the {module} package, which is not installed: pip install {module} "
                        "(or choose AdamW)"]
    with pytest.raises(ValueError, match=f"pip install {module}"):
        make_optimizer(name, _params(), lr)


def test_prodigy_wants_a_learning_rate_near_one():
    assert not any("Prodigy estimates" in p for p in TrainConfig(optimizer="Prodigy", learning_rate=1.0).problems())
    problems = "; ".join(TrainConfig(optimizer="Prodigy", learning_rate=1e-4).problems())
    assert "Prodigy estimates its own step size" in problems and "use 1.0" in problems and "not 0.0001" in problems


def test_8bit_adamw_that_cannot_run_on_the_device_is_refused_clearly(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")

    class Broken:
        def __init__(self, *a, **k):
            raise NotImplementedError("no kernel for this device")

    monkeypatch.setattr(bnb.optim, "AdamW8bit", Broken)
    optimizers._check_8bit_runs.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"8-bit AdamW \(bitsandbytes .*\) does not run on cpu here .*no kernel.*"
                                             r"choose AdamW"):
            make_optimizer("AdamW8bit", _params(), 1e-3)
    finally:
        optimizers._check_8bit_runs.cache_clear()


def test_8bit_adamw_runs_on_this_cpu():
    """bitsandbytes (≥ 0.50) runs its 8-bit AdamW on a CPU: the probe passes and a step moves the parameters."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")
    params = _params()
    before = [p.detach().clone() for p in params]
    opt = make_optimizer("AdamW8bit", params, 1e-2)
    _step(opt, params, 0)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(params, before))


@pytest.mark.parametrize("name,applied", [("AdamW", 0.05), ("AdamW8bit", 0.05), ("Prodigy", 0.05), ("Adam", 0.0)])
def test_weight_decay_reaches_the_decoupled_optimizers(name, applied):
    if optimizers.missing_package(name):
        pytest.skip(optimizers.missing_package(name))
    config = TrainConfig(optimizer=name, weight_decay=0.05, learning_rate=1.0 if name == "Prodigy" else 1e-4)
    assert config.effective_weight_decay() == applied
    optimizer = make_optimizer(name, _params(), config.learning_rate, config.effective_weight_decay())
    assert optimizer.param_groups[0].get("weight_decay", 0.0) == applied
