"""Train LoRA's optimizers: torch's own, and two lighter ones where their packages install.

- **AdamW8bit**: AdamW whose two moments are kept 8-bit, block-wise quantized with a dynamic map (bitsandbytes;
  Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization", ICLR): about a quarter of AdamW's optimizer
  memory. Tensors under 4096 elements keep 32-bit moments (bitsandbytes' `min_8bit_size`). bitsandbytes ≥ 0.50 runs
  it on the CPU as well as on CUDA; where a build cannot run it on the training device, a one-time probe step refuses
  it before training starts.
- **Prodigy** (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML; PyPI
  `prodigyopt`): Adam whose step size is d_k·λ_k, with d estimated from the run itself (the paper's Adam variant):
  m ← β₁m + (1−β₁)d_k g_k, v ← β₂v + (1−β₂)d_k² g_k², r ← √β₂·r + (1−√β₂)λ_k d_k²⟨g_k, x₀ − x_k⟩,
  s ← √β₂·s + (1−√β₂)λ_k d_k² g_k, d_{k+1} = max(d_k, r/‖s‖₁), x ← x − λ_k d_k m/(√v + d_k ε). The package drops
  the common (1−√β₂) factor and scales r and s by 1/d₀ (neither changes r/‖s‖₁), and multiplies the estimate by
  `d_coef`. λ_k is the learning rate: a multiplier of the estimated step, 1.0 by the authors' recommendation, and the
  learning-rate schedule still applies to it. Settings are the authors' README advice for diffusion models:
  d₀ = 1e-6, d_coef = 1, `use_bias_correction=True` (λ_k times Adam's √(1−β₂^{k+1})/(1−β₁^{k+1})),
  `safeguard_warmup=True` (λ_k left out of s, so a warm-up does not inflate d), decoupled weight decay 0.01 (the
  weight_decay input's default; prodigyopt scales it by the step d_k·λ_k), and the
  betas (0.9, 0.99) it says sometimes help. The last matters: Adam's bias correction stays well below 1 for
  thousands of steps with β₂ = 0.999 (0.15 at step 10, 0.2 at step 40), and it scales r but, with the safeguard, not s,
  so d grows slowly; on a 16-dimensional quadratic d reached its plateau in ~50 steps with β₂ = 0.99 against ~90 with
  0.999 (~20 in the paper's form; tests/unit/test_optimizers.py has the recurrence). To ask for a smaller or larger
  step the README prefers `d_coef` (0.5 or 2) over lr; if d stays near d₀ (the log shows it), it suggests a larger
  d₀ (1e-5 to 1e-4).

Both keep every piece of their state in `optimizer.state_dict()` (tensors, ints and floats), which the resume state
file stores bit for bit (state.py).
"""

import contextlib
import functools
import importlib.util
import logging
from io import StringIO

import torch

# optimizer -> (module it needs, the line that installs it)
NEEDS = {
    "AdamW8bit": ("bitsandbytes", "pip install bitsandbytes"),
    "Prodigy": ("prodigyopt", "pip install prodigyopt"),
}
PRODIGY = dict(betas=(0.9, 0.99), d0=1e-6, d_coef=1.0, use_bias_correction=True, safeguard_warmup=True, decouple=True)
PRODIGY_LR = (0.1, 1.0)  # lr multiplies Prodigy's own estimate: 1.0 recommended; below 0.1 it barely trains


def missing_package(name: str) -> str | None:
    """Why optimizer `name` cannot be used here (its package is not installed, with the install line), or None."""
    if name not in NEEDS:
        return None
    module, install = NEEDS[name]
    if importlib.util.find_spec(module) is None:
        return f"optimizer {name} needs the {module} package, which is not installed: {install} (or choose AdamW)"
    return None


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`weight_decay` is the decoupled decay of AdamW, AdamW8bit and Prodigy; Adam and SGD train without any."""
    params = list(params)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name in NEEDS:
        problem = missing_package(name)
        if problem:
            raise ValueError(problem)
    if name == "AdamW8bit":
        bnb = _bitsandbytes()
        _check_8bit_runs(params[0].device.type if params else "cpu")
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if name == "Prodigy":
        from prodigyopt import Prodigy

        with contextlib.redirect_stdout(StringIO()):  # it prints "Using decoupled weight decay" to stdout
            return Prodigy(params, lr=lr, weight_decay=weight_decay, **PRODIGY)
    raise ValueError(f"unknown optimizer {name!r}")


def log_values(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What the run's log shows of the optimizer beyond the learning rate: Prodigy's estimated step size d."""
    group = optimizer.param_groups[0]
    return {"prodigy_d": float(group["d"])} if "d0" in group and "d" in group else {}


@contextlib.contextmanager
def _quiet(logger_name: str):
    """bitsandbytes logs a warning on import on some CPUs about a 4-bit matmul kernel it could not fetch from a
    hub; the optimizer needs no such kernel."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _bitsandbytes():
    with _quiet("bitsandbytes"):
        import bitsandbytes

    return bitsandbytes


@functools.cache
def _check_8bit_runs(device_type: str) -> None:
    """One 8-bit AdamW step on a 4096-element tensor on the device, so an unsupported build fails here, clearly."""
    bnb = _bitsandbytes()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            probe = torch.zeros(4096, device=device_type, requires_grad=True)
            probe.grad = torch.ones_like(probe)
            bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as e:  # any failure of the library on this device means the same thing to the user
        raise ValueError(
            f"8-bit AdamW (bitsandbytes {getattr(bnb, '__version__', '?')}) does not run on {device_type} here "
            f"({type(e).__name__}: {e}): choose AdamW, or install a bitsandbytes build that supports {device_type}"
        ) from None
