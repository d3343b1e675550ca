"""Sampling step time of the Personalization Guider against stock CFG with the LoRA merged, against ComfyUI's
conditioning-hooks construction of the same guidance, and against itself with every layer on activation corrections
(no second weight copy: guidance/branch_weights.py), on one model, interleaved."""

import statistics
import time

import torch

from ..common import clock as wall_clock
from ..common import bootstrap_ci, spread

WARMUP_STEPS = 2
NAMES = ("stock CFG, LoRA merged", "hooks construction", "Personalization Guider",
         "Personalization Guider, activation corrections only")


def _guiders(architecture: str, rank: int, s: float = 0.3, cfg: float = 5.0):
    import comfy.hooks
    import comfy.samplers
    import comfy.sd

    from ...guidance.guider import make_guider
    from ...tinymodels.build import build_tiny_model
    from ...lora.adapter import LoraAdapter

    model, clip, _ = build_tiny_model(architecture, 0)
    g = torch.Generator().manual_seed(0)
    adapter = LoraAdapter.for_model(model.model.diffusion_model, "attention", rank, rank, g)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * 0.1)
    lora = adapter.lora_state_dict()
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    positive, null = enc("a photo of sks dog"), enc("")
    merged, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    stock = comfy.samplers.CFGGuider(merged)
    stock.set_conds(positive, null)
    stock.set_cfg(cfg)
    hooks = comfy.samplers.CFGGuider(model)
    hooks.set_conds(comfy.hooks.set_hooks_for_conditioning(positive, comfy.hooks.create_hook_lora(lora, 1.0, 0.0)),
                    comfy.hooks.set_hooks_for_conditioning(null, comfy.hooks.create_hook_lora(lora, s, 0.0)))
    hooks.set_cfg(cfg)
    ours = make_guider(model, positive, null, lora, cfg=cfg, s_start=s, s_end=s)
    corrections = make_guider(model, positive, null, lora, cfg=cfg, s_start=s, s_end=s, split_weights=False)
    return model, dict(zip(NAMES, (stock, hooks, ours, corrections)))


def _step_time(guider, model, steps: int, size: int, clock=wall_clock) -> float:
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    latent = torch.zeros(1, model.model.latent_format.latent_channels, size, size)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    stamps = []
    guider.sample(Noise_RandomNoise(0).generate_noise({"samples": latent}), latent, comfy.samplers.sampler_object("euler"),
                  sigmas, callback=lambda *a: stamps.append(clock()), disable_pbar=True, seed=0)
    return statistics.median([b - a for a, b in zip(stamps, stamps[1:])][WARMUP_STEPS - 1 :])


def paired_step_times(architecture: str, repeats: int, steps: int, rank: int, clock: str = "wall") -> dict:
    """`clock="cpu"` times steps in this process's CPU seconds (time.process_time): on a machine shared with
    other work, waiting for a core then does not count, which wall time cannot separate from the work."""
    from ...tinymodels.configs import CONFIGS

    model, guiders = _guiders(architecture, rank)
    size = CONFIGS[architecture].default_resolution // 8
    times = {n: [] for n in NAMES}
    for repeat in range(repeats):
        order = NAMES[repeat % len(NAMES):] + NAMES[: repeat % len(NAMES)]
        for name in order:
            times[name].append(_step_time(guiders[name], model, steps, size,
                                          time.process_time if clock == "cpu" else wall_clock))
    base = times[NAMES[0]]
    return {n: {"s_per_step": spread(times[n]), "ratio_to_stock": spread([a / b for a, b in zip(times[n], base)])}
            for n in NAMES}


def _captured_call(guider, model, size: int):
    """The arguments of one batched CFG forward (both branches) of `guider`'s loaded clone: one euler step sampled
    with an APPLY_MODEL wrapper that keeps them."""
    import comfy.patcher_extension

    captured = {}

    def keep(executor, *args, **kwargs):
        captured.setdefault("call", (args, kwargs))
        return executor(*args, **kwargs)

    clone = guider.model_patcher
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "driftless_bench_capture", keep)
    _step_time(guider, model, WARMUP_STEPS + 2, size)
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "driftless_bench_capture")
    return captured["call"]


def _loaded_guider(architecture: str, rank: int, resolution: int | None):
    """The Personalization Guider's clone of a bench model, loaded, its BranchLayers, and the (args, kwargs) of one
    batched cond + uncond forward of it at `resolution` px (default: the model's own)."""
    import comfy.model_management

    from ...tinymodels.configs import CONFIGS

    model, guiders = _guiders(architecture, rank)
    ours = guiders["Personalization Guider"]
    call = _captured_call(ours, model, (resolution or CONFIGS[architecture].default_resolution) // 8)
    comfy.model_management.load_models_gpu([ours.model_patcher])
    return ours.model_patcher, ours.branch_layers, call


def paired_forward_ratios(architecture: str, pairs: int, rank: int, clock: str = "cpu",
                          resolution: int | None = None) -> dict:
    """The guided forward against the stock forward of the same batch, call by call: with the guider's clone loaded
    (the LoRA merged at 1, as stock CFG has it), one batched cond+uncond `apply_model` with the branch layers removed
    (stock: every row through the merged weights) and one with them installed (ours: the null rows through W + s·Δ),
    alternating, `pairs` times. Pairing neighbouring calls cancels the drift of a shared machine that whole sampling
    runs in rotation only average out; the ratio is per pair, summarised by its median and a bootstrap 95% interval.
    `resolution`: the image side in pixels (default: the model's own, 64 px for the bench models)."""
    clone, layers, (args, kwargs) = _loaded_guider(architecture, rank, resolution)
    diffusion_model, device = clone.model.diffusion_model, clone.load_device
    tick = time.process_time if clock == "cpu" else wall_clock

    def timed(install: bool) -> float:
        layers.remove()
        if install:
            layers.install(diffusion_model, device)
        with torch.no_grad():
            clone.model.apply_model(*args, **kwargs)  # warm: the stacked weights are built on the first call
            start = tick()
            clone.model.apply_model(*args, **kwargs)
            return tick() - start

    ratios, stock = [], []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        t = dict(zip(order, (timed(order[0]), timed(order[1]))))
        ratios.append(t[True] / t[False])
        stock.append(t[False])
    layers.install(diffusion_model, device)
    return {"stock_s_per_forward": spread(stock), "ratio": {**spread(ratios), "ci95": bootstrap_ci(ratios)},
            "split_layers": len(layers.split_names), "lora_layers": len(layers.names)}


def _layer_inputs(architecture: str, rank: int, resolution: int | None):
    """The guider's loaded clone with its branch layers installed, the batch plan of one captured cond + uncond
    forward, and each LoRA module's input in that forward: {name: (module, x)}."""
    clone, layers, (args, kwargs) = _loaded_guider(architecture, rank, resolution)
    diffusion_model = clone.model.diffusion_model
    layers.install(diffusion_model, clone.load_device)
    modules = dict(diffusion_model.named_modules())
    inputs, plans = {}, []

    def keep(name):
        def hook(module, positional):
            inputs.setdefault(name, (module, positional[0].detach().clone()))
            plans.append(layers.plan)
        return hook

    handles = [modules[n].register_forward_pre_hook(keep(n)) for n in layers.split_names]
    with torch.no_grad():
        clone.model.apply_model(*args, **kwargs)
    for handle in handles:
        handle.remove()
    return layers, plans[0], inputs


def layer_costs(architecture: str, rank: int, pairs: int, row_scales=(1, 4), resolution: int | None = None,
                clock: str = "cpu", flush_bytes: int = 64 * 2**20) -> dict:
    """Where the guided forward's residual cost sits: each split LoRA layer of one captured guided forward, called on
    its real input (and on that input repeated `row_scales` times along the tokens) three ways in rotated order,
    `pairs` times: the stock layer (the merged weight on every row), the guider's stacked GEMM, and the activation
    correction (the merged weight on every row, then (s − 1)·Δ(x) added on the null rows: what the guider does where
    it cannot hold a second weight). Before each call a buffer larger than the CPU's last-level cache is written
    (`flush_bytes`), so the layer reads its weights from memory, as in a forward through a model larger than the
    cache (on a GPU the buffer is on the GPU, larger than an H100's 50 MB L2). Reports per row scale the summed
    median seconds of the stock layers, the extra seconds of the stacked and of the corrected ones, and the second
    weights' bytes. `clock`: "cpu" (process CPU seconds) or "wall" (synchronized: on a GPU always)."""
    import torch.nn.functional as F

    from ...guidance.branch_weights import correct

    layers, plan, inputs = _layer_inputs(architecture, rank, resolution)
    device = next(iter(inputs.values()))[1].device
    flush = torch.empty(flush_bytes // 4, device=device)
    tick = time.process_time if clock == "cpu" and device.type == "cpu" else wall_clock
    scales = {}
    for scale in row_scales:
        per_layer = []
        for name, (module, x) in sorted(inputs.items()):
            x, lora = _more_rows(x, scale), layers.layers_of(name)
            stock = lambda: F.linear(x, module.weight, module.bias)  # noqa: E731
            layers.plan = plan
            medians = _rotated_medians([stock, lambda: module(x), lambda: correct(stock(), x, plan, lora)], pairs,
                                       flush, tick)
            layers.plan = None
            per_layer.append({"layer": name, "rows": x.numel() // x.shape[-1], "weight": list(module.weight.shape),
                              "stock_s": medians[0], "extra_s": medians[1] - medians[0],
                              "correction_extra_s": medians[2] - medians[0],
                              "second_weight_bytes": module.weight.numel() * module.weight.element_size()})
        total = {k: sum(r[k] for r in per_layer) for k in ("stock_s", "extra_s", "correction_extra_s", "second_weight_bytes")}
        scales[scale] = {**total, "ratio": (total["stock_s"] + total["extra_s"]) / total["stock_s"],
                         "correction_ratio": (total["stock_s"] + total["correction_extra_s"]) / total["stock_s"],
                         "layers": per_layer}
    return {"split_layers": len(inputs), "scales": scales}


def _more_rows(x: torch.Tensor, scale: int) -> torch.Tensor:
    """`x` (CFG's two halves along its first dimension) with each token of each half repeated `scale` times."""
    halves = x.reshape(2, -1, x.shape[-1]).repeat_interleave(scale, dim=1)
    return halves if x.dim() == 3 else halves.reshape(-1, x.shape[-1])


def _rotated_medians(calls: list, rounds: int, flush: torch.Tensor, tick) -> list[float]:
    """Median seconds of each of `calls` over `rounds` rounds after one warm-up round, each round in an order rotated
    by one, `flush` written before each call."""
    times = [[] for _ in calls]
    with torch.no_grad():
        for r in range(rounds + 1):
            for i in [*range(r % len(calls), len(calls)), *range(r % len(calls))]:
                flush.add_(1.0)
                start = tick()
                calls[i]()
                if r:
                    times[i].append(tick() - start)
    return [statistics.median(t) for t in times]
