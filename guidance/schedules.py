"""How the weak model's LoRA strength s moves over the sampling run (pure functions).

Personalization guidance (Park et al., ICCV 2025, "Steering Guidance for Personalized T2I Diffusion
Models") replaces CFG's unconditional branch by a weak model θ_weak = θ_base + s·Δ; the paper's
"extent of unlearning" ω is 1 − s. Whether ω should depend on the timestep is left open by the paper,
so s may follow a schedule between `s_start` and `s_end` over the part [start, end] of the run;
outside that part the guider is plain CFG of the personalized model (s = 1).
"""

import math

SCHEDULES = {
    "constant": "s_start throughout",
    "linear": "from s_start to s_end in a straight line",
    "cosine": "from s_start to s_end along a half cosine (slow at both ends)",
}


def strength_at(progress: float, schedule: str, s_start: float, s_end: float, start: float = 0.0, end: float = 1.0) -> float:
    """s at `progress` ∈ [0, 1] of the sampling run (0 = first step, 1 = last)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    if not start <= progress <= end:
        return 1.0
    if schedule == "constant":
        return s_start
    x = 0.0 if end <= start else (progress - start) / (end - start)
    if schedule == "cosine":
        x = 0.5 * (1 - math.cos(math.pi * x))
    return s_start + (s_end - s_start) * x


def schedule_problems(s_start: float, s_end: float, start: float, end: float) -> list[str]:
    problems = []
    for name, value in (("weak_strength", s_start), ("weak_strength_end", s_end)):
        if not 0.0 <= value <= 1.0:
            problems.append(f"{name} is a LoRA strength in [0, 1] (got {value})")
    if not 0.0 <= start <= end <= 1.0:
        problems.append(f"the guided part of the run needs 0 <= start <= end <= 1 (got start {start}, end {end})")
    return problems


def progress_of(sigma: float, sigmas) -> float:
    """Where `sigma` sits in the run's sigma schedule, 0 (first) to 1 (last step), by the nearest entry."""
    values = [float(s) for s in sigmas]
    steps = max(1, len(values) - 2)  # the last sigma is the end point (usually 0), never evaluated
    index = min(range(len(values)), key=lambda i: abs(values[i] - sigma))
    return min(1.0, index / steps)
