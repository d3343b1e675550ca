"""Roofline: how far a measured step is from this machine's matmul throughput.

The floor of a step is its FLOPs (counted by torch.utils.flop_counter on one real step: matmuls,
convolutions and attention, forward and backward) divided by the GFLOP/s this machine reaches on a large
fp32 matmul with the same thread count. A step time near that floor leaves little to gain from the
training code; a step far above it is bound by memory traffic or per-operator overhead.
"""

import statistics
import time

import torch


def matmul_gflops(size: int = 1024, repeats: int = 7) -> float:
    """Median GFLOP/s of an fp32 size×size matmul on the default device's CPU threads."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    torch.mm(a, b)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def training_step_flops(model, data, rank: int, targets: str = "all linear+conv") -> float:
    """FLOPs of one Driftless training step (forward, backward) on `model`, counted, not estimated."""
    from torch.utils.flop_counter import FlopCounterMode

    from ...trainers.config import TrainConfig
    from ...trainers.loop import TrainingRun

    config = TrainConfig(steps=10, rank=rank, alpha=rank, targets=targets, null_prompt_dropout=0.0)
    run = TrainingRun(model, data, config, [])
    run.activate()
    run.step()  # first step outside the counter: lazy set-up is not part of a step
    counter = FlopCounterMode(display=False)
    with counter:
        run.step()
    return float(counter.get_total_flops())


def line(flops: float, gflops: float, step_s: float) -> dict:
    floor = flops / (gflops * 1e9)
    return {"gflop_per_step": flops / 1e9, "matmul_gflops": gflops, "floor_s": floor, "step_s": step_s,
            "fraction_of_matmul_throughput": floor / step_s}


def describe(r: dict) -> str:
    return (f"roofline: {r['gflop_per_step']:.1f} GFLOP per step; this CPU's fp32 matmul reaches {r['matmul_gflops']:.0f} "
            f"GFLOP/s, a floor of {r['floor_s']:.3f} s/step; measured {r['step_s']:.3f} s/step = "
            f"{100 * r['fraction_of_matmul_throughput']:.0f}% of matmul throughput")
