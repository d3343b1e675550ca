"""fp8 bases: a diffusion model stored in float8_e4m3fn, as UNETLoader's weight_dtype "fp8_e4m3fn" loads it, trains a
LoRA and guides on the CPU; its loss stays near the same model stored in bf16; the base weights held while a step
runs are half of bf16's; the saved LoRA is an ordinary fp32 file.

How ComfyUI loads such a file (comfy.sd.load_diffusion_model_state_dict with model_options["dtype"]): the model is
built with that weight dtype and `comfy.model_management.unet_manual_cast`'s compute dtype for the load device
(float32 on a CPU, for bf16 as for fp8), so its layers are `comfy.ops.manual_cast` ones that cast each weight when
they run. The tiny SD1.5/SDXL/Flux UNets cannot go through the stock detector (it knows full widths only), so
`build_unet(weight_dtype=...)` repeats those calls; on sd35-tiny, which the detector reads whole, the first test
checks that it gives what UNETLoader gives, byte for byte.

`./driftless --host 0.3.75 python tests/comfy/test_fp8_base.py` prints the bench-sized figures of docs/benchmarks.md.
"""

import functools

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

FP8 = torch.float8_e4m3fn
SETTINGS = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.2, targets="all linear+conv")


@pytest.fixture(scope="module", autouse=True)
def _models_built_once_per_module():
    yield
    _model.cache_clear()  # dropped before ComfyUI shuts down


@functools.cache
def _model(name: str, weight_dtype):
    from driftless.tinymodels.build import build_tiny_model

    return build_tiny_model(name, 0, weight_dtype=weight_dtype)


def _data(name: str, n: int = 2, size: int = 8):
    """Random latents in the family's channels and one caption (the same for every weight dtype)."""
    from driftless.trainers.data import TrainingData

    model, clip, _ = _model(name, None)
    channels = model.model.latent_format.latent_channels
    latents = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))
    return TrainingData(latents, [encode("a photo of sks cat")] * n, encode(""), ["a photo of sks cat"] * n)


def _dtypes(patcher) -> set:
    module = patcher.model.diffusion_model
    return {t.dtype for t in [*module.parameters(), *module.buffers()]}


# ---- loading as ComfyUI loads an fp8 file --------------------------------------------------------------------
def test_the_fp8_tiny_model_is_what_unetloader_makes_of_its_file(comfy_host):
    """sd35-tiny saved as a diffusion-model file and loaded by the stock UNETLoader with weight_dtype fp8_e4m3fn equals
    build_unet(weight_dtype=float8_e4m3fn): same class, weights stored fp8 (1 byte each), manual-cast layers computing
    in float32 on the CPU, identical bytes."""
    import comfy.ops
    from safetensors.torch import save_file

    import nodes

    reference, _, _ = _model("sd35-tiny", None)
    folder = comfy_host.base_directory / "models" / "diffusion_models" / "fp8-test"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in reference.model.diffusion_model.state_dict().items()}, folder / "sd35-tiny.safetensors")
    stock = nodes.UNETLoader().load_unet("fp8-test/sd35-tiny.safetensors", "fp8_e4m3fn")[0]
    built = _model("sd35-tiny", FP8)[0]

    for model in (stock, built):
        assert _dtypes(model) == {FP8}
        assert model.model.get_dtype() == FP8 and model.model.manual_cast_dtype == torch.float32
        linears = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(isinstance(m, comfy.ops.manual_cast.Linear) for m in linears)
    assert type(stock.model.model_config) is type(built.model.model_config)
    ours, theirs = built.model.diffusion_model.state_dict(), stock.model.diffusion_model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key].view(torch.uint8), theirs[key].view(torch.uint8)), key
    stored = sum(t.nbytes for t in ours.values())
    assert stored * 4 == sum(t.nbytes for t in reference.model.diffusion_model.state_dict().values())


# ---- training: loss near bf16 ----------------------------------------------------------------------------------
# Tolerance. float8_e4m3fn keeps 3 mantissa bits: each stored weight is off by up to 2^-4 = 6.25% of itself
# (about 3.6% RMS), bf16 by up to 2^-8 = 0.4%. A layer's output sums many weights with independent errors, so the
# model's prediction moves by a few percent of itself, and the MSE loss against the fixed target (noise, or
# noise - x0) by about as much: 5% per step, 2% averaged over the run. Measured (8 steps, max / mean, the same on
# 0.3.75 and 0.33.0): sd15-tiny 1.7% / 0.6%, sdxl-tiny 2.0% / 1.1%, sd35-tiny 0.3% / 0.1%, flux-dev-tiny 2.1% / 0.8%,
# flux-tiny 1.2% / 0.5%.
LOSS_TOLERANCE_STEP, LOSS_TOLERANCE_MEAN = 0.05, 0.02


@pytest.mark.parametrize("name", ["sd15-tiny", "sdxl-tiny", "sd35-tiny", "flux-dev-tiny", "flux-tiny"])
def test_an_fp8_base_trains_within_tolerance_of_bf16(comfy_host, name):
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import train_lora

    data = _data(name)
    losses, held = {}, {}
    for dtype in (torch.bfloat16, FP8):
        model = _model(name, dtype)[0]
        seen = []
        result = train_lora(model, data, TrainConfig(steps=8, **SETTINGS),
                            on_step=lambda *args, seen=seen: seen.append(_dtypes(args[-1])))
        losses[dtype], held[dtype] = torch.tensor(result.losses), seen
        assert torch.isfinite(losses[dtype]).all()
        assert {v.dtype for v in result.adapter.lora_state_dict().values()} == {torch.float32}
    assert held[FP8] == [{FP8}] * 8 and held[torch.bfloat16] == [{torch.bfloat16}] * 8  # stored so at every step
    relative = (losses[FP8] - losses[torch.bfloat16]).abs() / losses[torch.bfloat16]
    assert relative.max() <= LOSS_TOLERANCE_STEP, relative
    assert relative.mean() <= LOSS_TOLERANCE_MEAN, relative
    assert relative.max() > 0  # fp8 is not silently computing with the bf16 weights


# ---- what training holds of the base --------------------------------------------------------------------------
def held_base_bytes(run) -> dict:
    """Bytes of base weights held while `run` takes one training step: the diffusion model's parameters and buffers
    as stored, and the copies of them that autograd keeps for backward (tensors saved for backward whose values are
    a base weight cast to their dtype, counted once per storage; the stored tensors themselves are not copies)."""
    module = run.model.diffusion_model
    tensors = [*module.parameters(), *module.buffers()]
    own = {t.untyped_storage().data_ptr() for t in tensors}
    by_shape: dict[tuple, list] = {}
    for t in tensors:
        by_shape.setdefault(tuple(t.shape), []).append(t)
    copies: dict[int, int] = {}

    def pack(saved):
        if not saved.is_floating_point() or saved.untyped_storage().data_ptr() in own:
            return saved
        for view in (saved, saved.t() if saved.ndim == 2 else None):
            if view is not None and any(torch.equal(view, w.to(view.dtype)) for w in by_shape.get(tuple(view.shape), [])):
                copies[saved.untyped_storage().data_ptr()] = saved.untyped_storage().nbytes()
                break
        return saved

    stored = sum(t.nbytes for t in tensors)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
        run.step()
    return {"stored": stored, "copies": sum(copies.values()), "total": stored + sum(copies.values())}


def measure_held(name_or_model, data, weight_dtypes=(torch.bfloat16, FP8), **settings) -> dict:
    """held_base_bytes of the second step (the first warms up) per weight dtype; gradient checkpointing off, where
    autograd keeps the most."""
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import TrainingRun

    out = {}
    for dtype in weight_dtypes:
        model = _model(name_or_model, dtype)[0] if isinstance(name_or_model, str) else name_or_model(dtype)
        run = TrainingRun(model, data, TrainConfig(steps=2, gradient_checkpointing=False, **{**SETTINGS, **settings}))
        run.step()
        out[dtype] = held_base_bytes(run)
    return out


# Tolerance: the stored bytes halve exactly (every parameter and buffer is stored in the weight dtype); what is left
# is the norms' weight vectors, cast per forward and saved by the norm itself, the same fp32 bytes for both (sd15-tiny:
# 15.5 KiB, 1.1% of the fp8 base; on a full-size UNet far less): held 0.503x (sd15-tiny), 0.500x (sd35, flux-dev).
@pytest.mark.parametrize("name", ["sd15-tiny", "sd35-tiny", "flux-dev-tiny"])
def test_the_base_weights_held_while_training_halve_against_bf16(comfy_host, name):
    held = measure_held(name, _data(name, n=1, size=16))
    bf16, fp8 = held[torch.bfloat16], held[FP8]
    assert fp8["stored"] * 2 == bf16["stored"]
    assert fp8["copies"] == bf16["copies"] <= 0.02 * fp8["stored"], held
    assert fp8["total"] / bf16["total"] == pytest.approx(0.5, abs=0.01), held


def test_without_recasting_autograd_kept_fp32_copies_of_the_base(comfy_host, monkeypatch):
    """What `recast_in_backward` removes: without it each cast layer after the first LoRA kept its fp32 weight for
    backward, more bytes than the whole fp8 base, so fp8 held 0.83x of bf16's weights instead of 0.5x (sd15-tiny)."""
    from driftless.trainers import cast_weights

    data = _data("sd15-tiny", n=1, size=16)
    monkeypatch.setattr(cast_weights, "castable_layers", lambda module: [])
    held = measure_held("sd15-tiny", data)
    assert held[FP8]["copies"] > 3 * held[FP8]["stored"], held
    assert held[FP8]["total"] / held[torch.bfloat16]["total"] > 0.8, held


@pytest.mark.parametrize("name, dtype, checkpointing", [
    ("sd15-tiny", "fp32", False), ("sd15-tiny", "bf16", True), ("flux-dev-tiny", "fp32", True),
    ("sd35-tiny", "bf16", False),
])
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, FP8])
def test_recasting_in_backward_changes_no_result(comfy_host, monkeypatch, name, dtype, checkpointing, weight_dtype):
    """Losses and the trained LoRA are bit-identical with and without recasting (fp32 compute or bf16 autocast,
    with and without gradient checkpointing): the same forward, the same backward kernels on the same values."""
    from driftless.trainers import cast_weights
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import train_lora

    data, model = _data(name), _model(name, weight_dtype)[0]
    config = TrainConfig(steps=3, dtype=dtype, gradient_checkpointing=checkpointing, **SETTINGS)
    calls = []
    original = cast_weights._RecastWeight.apply
    monkeypatch.setattr(cast_weights._RecastWeight, "apply", lambda *a: calls.append(1) or original(*a))
    recast = train_lora(model, data, config)
    assert calls  # the cast layers took the recasting path
    monkeypatch.setattr(cast_weights, "castable_layers", lambda module: [])
    plain = train_lora(model, data, config)
    assert recast.losses == plain.losses
    theirs = plain.adapter.lora_state_dict()
    for key, value in recast.adapter.lora_state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert all("forward_comfy_cast_weights" not in vars(m) for m in model.model.diffusion_model.modules())


def test_an_fp32_base_never_takes_the_recasting_path(comfy_host, monkeypatch):
    """On a CPU an fp32 base computes with its stored weights (no cast): nothing changes for it."""
    from driftless.trainers import cast_weights
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import train_lora

    calls = []
    original = cast_weights._RecastWeight.apply
    monkeypatch.setattr(cast_weights._RecastWeight, "apply", lambda *a: calls.append(1) or original(*a))
    train_lora(_model("sd15-tiny", None)[0], _data("sd15-tiny"), TrainConfig(steps=2, **SETTINGS))
    assert calls == []


# ---- guidance ------------------------------------------------------------------------------------------------
def _lora(name):
    """A LoRA with non-zero B on every attention and feed-forward layer (native keys), made on the fp32 model."""
    from driftless.lora.adapter import LoraAdapter

    g = torch.Generator().manual_seed(0)
    adapter = LoraAdapter.for_model(_model(name, None)[0].model.diffusion_model, "attention+ff", 4, 4.0, g)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * 0.2)
    return adapter.lora_state_dict()


def _sample(guider, model, steps=4):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    latent = torch.zeros(1, model.model.latent_format.latent_channels, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    noise = Noise_RandomNoise(5).generate_noise({"samples": latent})
    # as the executor runs every node: ComfyUI merges a LoRA into fp8 weights with stochastic rounding, which
    # cannot run while autograd records
    with torch.inference_mode():
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=5)


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ["sd15-tiny", "sd35-tiny"])
def test_the_guider_on_an_fp8_base(comfy_host, name):
    """At weak strength 1 the guider is stock CFG over the LoRA merged by ComfyUI's LoRA loading on the same fp8
    MODEL, bit for bit (the merge rounds W + delta back to fp8, stochastically, in both). At 0.3 it is compared with
    the exact construction: the fp8 base's weights dequantized into an fp32 model, the LoRA applied unrounded. Both
    fp8 paths err by the merge's rounding (measured at s = 1: 7.7% sd15-tiny, 5.1% sd35-tiny of the sample's largest
    value); the guider adds none of its own beyond it (measured 1.04-1.07x of that at s = 0.3, where the stock
    conditioning-hooks construction, rounding W + 0.3 delta, errs 1.07-1.19x): bound 1.25x."""
    import comfy.samplers
    import comfy.sd
    from driftless.guidance.guider import make_guider
    from driftless.tinymodels.build import build_unet
    from driftless.tinymodels.configs import CONFIGS

    model, clip, _ = _model(name, FP8)
    lora = _lora(name)
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))
    positive, null = encode("a photo of sks dog"), encode("")
    dequantized = build_unet(CONFIGS[name], 0)
    with torch.no_grad():
        stored = model.model.diffusion_model.state_dict()
        for key, value in dequantized.model.diffusion_model.state_dict().items():
            value.copy_(stored[key].float())

    with torch.inference_mode():
        merged = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)[0]
    stock = comfy.samplers.CFGGuider(merged)
    stock.set_conds(positive, null)
    stock.set_cfg(4.0)
    at_one = _sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=1.0, s_end=1.0), model)
    assert torch.equal(at_one, _sample(stock, merged))

    exact_one = _sample(make_guider(dequantized, positive, null, lora, cfg=4.0, s_start=1.0, s_end=1.0), dequantized)
    merge_error = _relative(at_one, exact_one)
    assert 0 < merge_error < 0.15
    guided = _sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=0.3, s_end=0.3), model)
    exact = _sample(make_guider(dequantized, positive, null, lora, cfg=4.0, s_start=0.3, s_end=0.3), dequantized)
    assert torch.isfinite(guided).all()
    assert _relative(guided, exact) <= 1.25 * merge_error, (_relative(guided, exact), merge_error)


# ---- the whole graph, as a user builds it ----------------------------------------------------------------------
def test_unetloader_fp8_train_save_and_guide_graph(run_prompt, comfy_host):
    """UNETLoader (fp8_e4m3fn) -> Training Data -> Train LoRA -> Save LoRA, and Personalization Guider ->
    SamplerCustomAdvanced, on sd35-tiny's diffusion-model file: it runs; the saved file holds fp32 tensors only."""
    from comfy_execution.graph_utils import GraphBuilder
    from safetensors import safe_open
    from safetensors.torch import save_file

    reference = _model("sd35-tiny", None)[0]
    folder = comfy_host.base_directory / "models" / "diffusion_models" / "fp8-test"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in reference.model.diffusion_model.state_dict().items()}, folder / "graph.safetensors")

    g = GraphBuilder(prefix="")
    unet = g.node("UNETLoader", id="unet", unet_name="fp8-test/graph.safetensors", weight_dtype="fp8_e4m3fn")
    tiny = g.node("DriftlessTinyModel", id="tiny", architecture="sd35-tiny", seed=0)
    image = g.node("EmptyImage", id="image", width=64, height=64, batch_size=1, color=0x3366CC)
    data = g.node("DriftlessTrainingData", id="data", clip=tiny.out(1), captions="a photo of sks vase",
                  images=image.out(0), vae=tiny.out(2))
    train = g.node(
        "DriftlessTrainLoRA", id="train", model=unet.out(0), training_data=data.out(0), steps=3, learning_rate=1e-2,
        rank=4, alpha=4.0, target_layers="attention", batch_size=1, gradient_accumulation=1, optimizer="AdamW",
        lr_schedule="constant", warmup_steps=0, training_dtype="fp32", gradient_checkpointing=True, seed=0,
        null_prompt_dropout=0.2, min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0,
        run_name="fp8_graph", checkpoint_every=0,
    )
    g.node("DriftlessSaveLoRA", id="save", lora=train.out(1), filename="fp8/sd35-tiny", overwrite=True)
    pos = g.node("CLIPTextEncode", id="pos", clip=tiny.out(1), text="a photo of sks vase")
    guider = g.node("DriftlessPersonalizationGuider", id="guider", model=train.out(0), lora=train.out(1),
                    positive=pos.out(0), clip=tiny.out(1), cfg=4.0, weak_strength=0.3, schedule="constant",
                    weak_strength_end=0.3, start=0.0, end=1.0, mode="personalization")
    latent = g.node("EmptySD3LatentImage", id="latent", width=64, height=64, batch_size=1)
    sigmas = g.node("BasicScheduler", id="sigmas", model=unet.out(0), scheduler="normal", steps=3, denoise=1.0)
    out = g.node("SamplerCustomAdvanced", id="sample", noise=g.node("RandomNoise", id="noise", noise_seed=1).out(0),
                 guider=guider.out(0), sampler=g.node("KSamplerSelect", id="select", sampler_name="euler").out(0),
                 sigmas=sigmas.out(0), latent_image=latent.out(0))
    decoded = g.node("VAEDecode", id="decode", samples=out.out(0), vae=tiny.out(2))
    g.node("SaveImage", id="samples", images=decoded.out(0), filename_prefix="fp8_guided")
    result = run_prompt(g.finalize())
    assert result.success, result.error
    assert "step 3/3" in result.log and len(result.files) == 1

    path = comfy_host.base_directory / "models" / "loras" / "fp8" / "sd35-tiny.safetensors"
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        count = len(list(f.keys()))
    assert dtypes == {torch.float32} and count > 0


def bench_figures(bench: str, repeats: int = 5) -> None:
    """On `bench` (256 px, rank 16, all linear+conv, fp32 compute, no checkpointing): the base bytes held during a
    step (bf16 vs fp8), and for bf16 and fp8 bases with and without recasting, the step's peak memory above the model
    (torch.profiler's per-operator allocations) and its CPU time (interleaved runs, `repeats` after a warm-up)."""
    import time
    from statistics import median

    from test_dit_training import step_memory

    from driftless.trainers import cast_weights
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import TrainingRun

    data = _data(bench, n=1, size=32)
    settings = dict(rank=16, alpha=16.0)
    held = measure_held(bench, data, **settings)
    bf16, fp8 = held[torch.bfloat16], held[FP8]
    print(f"{bench}: base weights held during a step {bf16['total'] / 2**20:.2f} MiB (bf16) -> "
          f"{fp8['total'] / 2**20:.2f} MiB (fp8) = {fp8['total'] / bf16['total']:.3f}x (stored "
          f"{bf16['stored'] / 2**20:.2f} -> {fp8['stored'] / 2**20:.2f} MiB; norm weights kept for backward "
          f"{fp8['copies'] / 2**20:.3f} MiB)")
    original, none = cast_weights.castable_layers, (lambda module: [])
    config = TrainConfig(steps=1000, gradient_checkpointing=False, **{**SETTINGS, **settings})
    runs = {(dtype, recast): TrainingRun(_model(bench, dtype)[0], data, config)
            for dtype in (torch.bfloat16, FP8) for recast in (True, False)}
    times, peaks = {key: [] for key in runs}, {}
    try:
        for repeat in range(repeats + 2):
            for (dtype, recast), run in runs.items():
                cast_weights.castable_layers = original if recast else none  # read when each step starts
                run.activate()
                if repeat == 0:
                    run.step()  # warm-up
                    peaks[dtype, recast] = step_memory(run)
                    continue
                start = time.process_time()
                run.step()
                times[dtype, recast].append(time.process_time() - start)
    finally:
        cast_weights.castable_layers = original
    for (dtype, recast), values in times.items():
        print(f"  {str(dtype).removeprefix('torch.')} base, {'recast in backward' if recast else 'cast copies kept'}: "
              f"peak step memory {peaks[dtype, recast] / 2**20:.1f} MiB above the model; {median(values[1:]):.3f} s/step "
              f"CPU (range {min(values[1:]):.3f}-{max(values[1:]):.3f})")


if __name__ == "__main__":  # the bench-sized figures for docs/benchmarks.md
    import pathlib
    import sys
    import tempfile

    from driftless.headless import host

    host.boot(tempfile.mkdtemp(), cpu=True)
    sys.path.insert(0, str(pathlib.Path(__file__).parent))  # test_dit_training's step_memory
    torch.set_num_threads(1)
    for bench in sys.argv[1:] or ("sd15-bench", "sd35-bench", "flux-dev-bench"):
        bench_figures(bench)
