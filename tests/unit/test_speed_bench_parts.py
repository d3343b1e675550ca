"""The speed benchmark's peak-memory reading on CPU (bench/speed/peak.py)."""

import torch


class _Scratch(torch.autograd.Function):
    """Allocates `size` float32 scratch inside its forward and frees it before returning (as a custom
    autograd function with a stacked temporary does)."""

    @staticmethod
    def forward(ctx, x, size):
        scratch = torch.ones(size) * 2  # two allocations of `size` floats, the first freed at once
        return x + scratch[: x.numel()].sum()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def test_cpu_peak_counts_what_lives_inside_an_enclosing_scope():
    """A temporary made and freed inside a custom function's forward counts at its own time: the peak holds at
    least the scratch (4 MiB), though its free is recorded against the enclosing function, which starts earlier."""
    from driftless.bench.speed.peak import peak_tensor_bytes

    size = 1 << 20
    x = torch.zeros(4)
    peak = peak_tensor_bytes(lambda: _Scratch.apply(x, size))
    assert 4 * size <= peak <= 3 * 4 * size  # the scratch (and the transient ones), nothing more


def test_cpu_peak_of_live_tensors():
    """Three 1 MiB tensors alive together, then freed: peak 3 MiB (and not 4, the sum of all allocations)."""
    from driftless.bench.speed.peak import peak_tensor_bytes

    def run():
        kept = [torch.empty(1 << 18) for _ in range(3)]  # 3 × 1 MiB
        del kept
        torch.empty(1 << 18)

    assert peak_tensor_bytes(run) == 3 * (1 << 20)


def test_bootstrap_interval_of_the_median_matches_scipy():
    """bench/common.py's percentile bootstrap of the median agrees with scipy.stats.bootstrap's percentile method on
    the same sample (to the resampling noise of 2000 draws), is reproducible, and collapses on constant data."""
    import numpy as np
    import pytest
    from scipy.stats import bootstrap

    from driftless.bench.common import bootstrap_ci

    values = np.random.default_rng(3).normal(1.0, 0.05, size=40).tolist()
    low, high = bootstrap_ci(values)
    reference = bootstrap((np.array(values),), np.median, n_resamples=20000, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    width = reference.high - reference.low
    assert low == pytest.approx(reference.low, abs=0.2 * width) and high == pytest.approx(reference.high, abs=0.2 * width)
    assert low < float(np.median(values)) < high
    assert bootstrap_ci(values) == (low, high)
    assert bootstrap_ci([1.5] * 7) == (1.5, 1.5)


def test_more_rows_repeats_tokens_within_each_cfg_half():
    """guidance-layers' larger inputs keep the conditional rows in the first half and the unconditional in the second
    (the stacked GEMM multiplies each half by its own weight)."""
    from driftless.bench.speed.guidance import _more_rows

    x = torch.arange(6.0).reshape(2, 3, 1)
    assert _more_rows(x, 2)[..., 0].tolist() == [[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]
    assert _more_rows(x.reshape(6, 1), 2)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
