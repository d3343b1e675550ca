"""Learning-rate schedules as a multiplier of the base rate at each optimizer step (0-based)."""

import math

SCHEDULES = {
    "constant": "the same rate for every step",
    "cosine": "linear warm-up, then cosine decay to zero at the last step (Loshchilov & Hutter 2017)",
    "linear warm-up": "linear warm-up from 0 over the warm-up steps, then constant",
}


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier for optimizer step `step` of `total_steps`; warm-up applies to cosine and linear warm-up."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "linear warm-up":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
