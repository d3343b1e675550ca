"""Training step time with each drift regularizer, as a ratio of the plain-LoRA step (same run, interleaved)."""

import torch

from ..common import spread
from . import training


def make_regularizers(name: str, clip):
    from ...trainers.regularizers.apt import APT
    from ...trainers.regularizers.dco import DCO
    from ...trainers.regularizers.parameter_anchor import ParameterAnchor
    from ...trainers.regularizers.prior_preservation import PriorPreservation

    if name == "plain":
        return []
    if name == "parameter anchor":
        return [ParameterAnchor(0.01)]
    if name == "DCO":
        return [DCO(mode="add")]
    if name == "APT":
        return [APT()]
    if name == "prior preservation":
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog"))
        latents = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(1))
        return [PriorPreservation(latents, cond, "a photo of a dog")]
    raise ValueError(name)


NAMES = ("plain", "parameter anchor", "DCO", "APT", "prior preservation")


def run(model, clip, data, name, steps, rank):
    import time

    from ...trainers.config import TrainConfig
    from ...trainers.loop import train_lora

    stamps = []
    config = TrainConfig(steps=steps, rank=rank, alpha=rank, targets="attention", null_prompt_dropout=0.0)
    train_lora(model, data, config, make_regularizers(name, clip), on_step=lambda *a: stamps.append(time.perf_counter()))
    return training.step_time(stamps)


def paired_ratios(architecture, repeats, steps, rank) -> dict:
    from ...tinymodels.build import build_tiny_model

    model, data = training._setup(architecture)
    _, clip, _ = build_tiny_model(architecture, 0)
    times = {n: [] for n in NAMES}
    ratios = {n: [] for n in NAMES[1:]}
    for repeat in range(repeats):
        order = NAMES[repeat % len(NAMES):] + NAMES[: repeat % len(NAMES)]  # rotate: no method always runs first
        this = {n: run(model, clip, data, n, steps, rank) for n in order}
        for n in NAMES:
            times[n].append(this[n])
        for n in NAMES[1:]:
            ratios[n].append(this[n] / this["plain"])
    return {n: {"s_per_step": spread(times[n]), **({"ratio": spread(ratios[n])} if n in ratios else {})} for n in NAMES}


PEAK_PROBE = r"""
import json, sys, threading, time, psutil, torch
from driftless.headless import host
host.configure_args(host.find_comfyui(), None, cpu=None)
from driftless.bench.speed import regularizers as r, training as t
from driftless.tinymodels.build import build_tiny_model
name, arch, steps, rank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model, data = t._setup(arch)
_, clip, _ = build_tiny_model(arch, 0)
import comfy.model_management as mm
mm.load_models_gpu([model])
cuda = torch.cuda.is_available()
process, peak, running = psutil.Process(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.002)
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
else:
    before = process.memory_info().rss
    thread = threading.Thread(target=sample, daemon=True); thread.start()
r.run(model, clip, data, name, steps, rank)
if cuda:
    after = torch.cuda.max_memory_allocated()
else:
    running[0] = False; thread.join(); after = peak[0]
print(json.dumps({"peak_growth_bytes": after - before}))
"""


def peak_memory(name: str, architecture: str, steps: int, rank: int) -> int:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, name, architecture, str(steps), str(rank)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"]
