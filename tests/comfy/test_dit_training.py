"""Train LoRA on the DiT families (SD3.5, Flux.1 dev and schnell), each property against a reference:

- the target presets select what they promise on each family, and one that matches nothing names the family;
- the LoRA hooks' gradient equals the gradient of the weight-merged LoRA W + (alpha/r)·B·A (torch.func), on Flux too,
  whose blocks add into tensors a hooked layer's output flows into (the in-place guard of lora/adapter.py);
- gradient checkpointing per transformer block gives the same gradients and keeps less activation memory;
- x_t and the training target are those of diffusers' FlowMatchEulerDiscreteScheduler and its DreamBooth scripts
  (x_t = (1 − σ)·x0 + σ·ε, target ε − x0), with each model's own schedule (SD3 shift 3, Flux dev shifted by
  resolution, schnell shift 1);
- every family ComfyUI can build that the pack does not train is refused by name, before work.

Run as a script for the bench-sized figures of docs/benchmarks.md (activation memory with and without checkpointing):
    ./driftless --host 0.33.0 python tests/comfy/test_dit_training.py
"""

import copy
import re
import types

import pytest
import torch

DITS = ("sd35-tiny", "flux-dev-tiny", "flux-tiny")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/comfy/conftest.py: bit-identical sums, and faster


@pytest.fixture(scope="module")
def dit(comfy_host):
    """(MODEL, CLIP) of a tiny DiT, built once per module (sd35-tiny's T5 alone takes seconds)."""
    from driftless.tinymodels.build import build_tiny_model

    built = {}

    def get(name):
        if name not in built:
            model, clip, _ = build_tiny_model(name, 0)
            built[name] = (model, clip)
        return built[name]

    return get


# ---- presets --------------------------------------------------------------------------------------
def _expected(name: str) -> dict[str, set]:
    """What each preset must select on the tiny models, written out block by block."""
    if name.startswith("flux"):
        double = lambda parts: {f"double_blocks.{i}.{p}" for i in (0, 1) for p in parts}  # noqa: E731
        single = lambda parts: {f"single_blocks.{i}.{p}" for i in (0, 1) for p in parts}  # noqa: E731
        attention = double(["img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj"]) | single(
            ["linear1", "linear2"])
        ff = attention | double(["img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2"])
        return {"attention": attention, "attention+ff": ff,
                "all linear+conv": ff | double(["img_mod.lin", "txt_mod.lin"]) | single(["modulation.lin"])}
    # sd35-tiny: block 0 has MMDiT-X's second image attention; block 1's text stream only feeds attention (pre_only)
    b0, b1 = "joint_blocks.0.", "joint_blocks.1."
    attention = {b0 + p for p in ["context_block.attn.qkv", "context_block.attn.proj", "x_block.attn.qkv",
                                  "x_block.attn.proj", "x_block.attn2.qkv", "x_block.attn2.proj"]}
    attention |= {b1 + p for p in ["context_block.attn.qkv", "x_block.attn.qkv", "x_block.attn.proj"]}
    ff = attention | {b0 + f"{s}.mlp.fc{i}" for s in ("context_block", "x_block") for i in (1, 2)}
    ff |= {b1 + f"x_block.mlp.fc{i}" for i in (1, 2)}
    return {"attention": attention, "attention+ff": ff,
            "all linear+conv": ff | {b + f"{s}.adaLN_modulation.1" for b in (b0, b1) for s in ("context_block", "x_block")}}


@pytest.mark.parametrize("name", DITS)
def test_presets_select_what_they_promise_on_each_family(dit, name):
    from driftless.lora.targets import TARGET_PRESETS, select_targets

    diffusion_model = dit(name)[0].model.diffusion_model
    expected = _expected(name)
    assert set(expected) == set(TARGET_PRESETS)
    for preset, names in expected.items():
        assert set(select_targets(diffusion_model, preset)) == names, preset
    # never the latent in/out layers nor the embedders, whatever the preset
    outside = {n for n, _ in diffusion_model.named_modules() if re.match(
        r"(img_in|txt_in|time_in|vector_in|guidance_in|final_layer|x_embedder|t_embedder|y_embedder|context_embedder)",
        n)}
    assert outside and not outside & set(select_targets(diffusion_model, "all linear+conv"))


@pytest.mark.parametrize("name,label", [("flux-dev-tiny", "Flux.1"), ("sd35-tiny", "SD3/SD3.5 MMDiT")])
def test_a_preset_matching_nothing_is_refused_naming_the_family(dit, name, label):
    from driftless.lora.targets import select_targets

    bare = copy.deepcopy(dit(name)[0].model.diffusion_model)
    for blocks in ("double_blocks", "single_blocks", "joint_blocks"):
        if hasattr(bare, blocks):
            setattr(bare, blocks, torch.nn.ModuleList())
    with pytest.raises(ValueError, match=rf"target preset 'attention' matched no layer of this {re.escape(label)} model"):
        select_targets(bare, "attention")


def test_node_tooltip_explains_each_preset_per_family(comfy_host):
    from driftless.nodes.train_lora import TrainLora

    spec = next(s for s in TrainLora.define_schema().inputs if s.id == "target_layers")
    for words in ("Flux.1", "linear1 and linear2 whole", "SD3/SD3.5 MMDiT", "attn2", "SD1.x/SD2.x/SDXL UNet",
                  "modulation included"):
        assert words in spec.tooltip, words


# ---- the adapter's gradient against the merged-weight LoRA ----------------------------------------
def _batch(model, clip, seed=0, n=2):
    """apply_model inputs for n noisy latents of the model's shape, its own conditioning and noise levels."""
    from driftless.trainers.conditioning import batch_inputs, model_inputs

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, 8, 8, generator=g)
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    inputs = batch_inputs([model_inputs(model.model, encode(t), x[:1]) for t in ("a photo of sks cat", "a dog")][:n])
    return x, torch.tensor([0.8, 0.3])[:n], inputs


def _adapter(diffusion_model, preset, seed=0):
    """A LoRA on `preset` with non-zero A and B (B = 0 at init would make the test vacuous)."""
    from driftless.lora.adapter import LoraAdapter

    g = torch.Generator().manual_seed(seed)
    adapter = LoraAdapter.for_model(diffusion_model, preset, 4, 8.0, g)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.up.copy_(0.1 * torch.randn(layer.up.shape, generator=g))
    return adapter


def _loss(model, x, sigma, inputs):
    return model.model.apply_model(x, sigma, **inputs).square().mean()


def _hooked_gradients(model, adapter, batch, checkpointing=False):
    from driftless.trainers.model_state import frozen_base, gradient_checkpointing

    dm = model.model.diffusion_model
    adapter.install(dm)
    try:
        with torch.inference_mode(False), torch.enable_grad(), frozen_base(dm), gradient_checkpointing(dm, checkpointing):
            adapter.zero_grad(set_to_none=True)
            adapter.requires_grad_(True)
            _loss(model, *batch).backward()
    finally:
        adapter.remove()
        adapter.requires_grad_(False)
    return [(layer.down.grad.clone(), layer.up.grad.clone()) for layer in adapter.layers]


def _merged_gradients(model, adapter, batch):
    """The same loss with every LoRA merged into its weight, W' = W + (alpha/r)·B·A (Hu et al. 2021, eq. 3): each
    layer's weight parameter is swapped for that tensor while the loss is computed, and A and B get their gradients
    by plain autograd through W'. Autograd keeps a copy of every tensor it saves (saved_tensors_hooks), so Flux's
    in-place adds cannot touch them: a mechanism of its own, not the adapter's guard."""
    from driftless.trainers.model_state import frozen_base

    dm = model.model.diffusion_model
    modules = dict(dm.named_modules())
    leaves = [(layer.down.detach().clone().requires_grad_(), layer.up.detach().clone().requires_grad_())
              for layer in adapter.layers]
    with torch.inference_mode(False), torch.enable_grad(), frozen_base(dm):
        originals = {name: modules[name]._parameters.pop("weight") for name in adapter.names}
        try:
            for name, layer, (down, up) in zip(adapter.names, adapter.layers, leaves):
                modules[name].weight = originals[name] + layer.scale_value() * (up @ down)
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                loss = _loss(model, *batch)
            loss.backward()
        finally:
            for name, weight in originals.items():
                del modules[name].weight
                modules[name]._parameters["weight"] = weight
    return [(down.grad, up.grad) for down, up in leaves]


@pytest.mark.parametrize("preset", ["attention", "all linear+conv"])
@pytest.mark.parametrize("name", DITS)
def test_hook_gradient_equals_the_merged_weight_gradient(dit, name, preset):
    """On Flux this is the backward that crashed ("modified by an inplace operation … output 0 of Add")."""
    from driftless.trainers.model_state import release_inference_tensors

    model, clip = dit(name)
    release_inference_tensors(model.model)
    adapter = _adapter(model.model.diffusion_model, preset)
    batch = _batch(model, clip)
    hooked, merged = _hooked_gradients(model, adapter, batch), _merged_gradients(model, adapter, batch)
    assert any(float(up.abs().max()) > 1e-4 for _, up in hooked)  # not vacuous
    for layer_name, (a, b) in zip(adapter.names, zip(hooked, merged)):
        for ours, reference in zip(a, b):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5, msg=layer_name)


def test_in_place_guards_are_counted_and_removed(dit):
    """Flux's ten block norms get one guard however many adapters are installed; none is left once they are gone."""
    from driftless.lora.adapter import GUARD

    dm = dit("flux-dev-tiny")[0].model.diffusion_model
    guarded = lambda: sorted(n for n, m in dm.named_modules() if GUARD in vars(m))  # noqa: E731
    a, b = _adapter(dm, "attention"), _adapter(dm, "attention+ff", seed=1)
    a.install(dm)
    b.install(dm)
    names = guarded()
    assert len(names) == 10 and all(re.search(r"(img|txt)_norm[12]$|pre_norm$", n) for n in names)
    assert all(len(m._forward_pre_hooks) == 1 for n, m in dm.named_modules() if n in names)
    a.remove()
    assert guarded() == names
    b.remove()
    assert guarded() == []


# ---- gradient checkpointing -----------------------------------------------------------------------
@pytest.mark.parametrize("name,blocks", [("sd35-tiny", 2), ("flux-dev-tiny", 4)])
def test_checkpointing_each_transformer_block_gives_the_same_gradients(dit, name, blocks):
    import torch.utils.checkpoint as checkpoint_module

    from driftless.trainers.model_state import release_inference_tensors

    model, clip = dit(name)
    release_inference_tensors(model.model)
    adapter, batch = _adapter(model.model.diffusion_model, "all linear+conv"), _batch(model, clip)
    plain = _hooked_gradients(model, adapter, batch)
    calls, original = [], checkpoint_module.checkpoint
    checkpoint_module.checkpoint = lambda fn, *a, **k: calls.append(fn) or original(fn, *a, **k)  # noqa: E731
    try:
        recomputed = _hooked_gradients(model, adapter, batch, checkpointing=True)
    finally:
        checkpoint_module.checkpoint = original
    assert len(calls) == blocks - 1  # one per transformer block but the last to run (Flux: 2 double + 2 single; SD3: 2 joint)
    for a, b in zip(plain, recomputed):
        for ours, reference in zip(a, b):
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert all("forward" not in vars(m) for m in model.model.diffusion_model.modules())


def step_memory(run) -> int:
    """Peak CPU memory a training step allocates above what it started with, in bytes: the running sum of every
    operator's own allocations minus frees (torch.profiler, profile_memory=True), in the order the operators ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run.step()
    held = peak = 0
    for _, allocated in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()):
        held += allocated
        peak = max(peak, held)
    return peak


def measure_checkpointing(model, data, **settings) -> dict:
    """Peak step memory without and with gradient checkpointing (after one step of each to warm up), and the
    LoRA each trains in 2 steps."""
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import TrainingRun

    out = {}
    for checkpointing in (False, True):
        run = TrainingRun(model, data, TrainConfig(steps=2, gradient_checkpointing=checkpointing, **settings))
        run.step()
        out[checkpointing] = step_memory(run)
    return out


def _one_example(model, clip, size=8):
    """TrainingData of one random latent [1, 16, size, size] and its caption."""
    from driftless.trainers.data import TrainingData

    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    latents = torch.randn(1, 16, size, size, generator=torch.Generator().manual_seed(0))
    return TrainingData(latents, [encode("a photo of sks cat")], encode(""), ["a photo of sks cat"])


@pytest.mark.parametrize("name", ["sd35-tiny", "flux-dev-tiny"])
def test_checkpointing_keeps_less_activation_memory(dit, name):
    model, clip = dit(name)
    # 256 px (32x32 latents): measured 0.56x (SD3.5, 2 joint blocks) and 0.34x (Flux, 2 + 2 blocks) of the peak
    memory = measure_checkpointing(model, _one_example(model, clip, 32), rank=4, alpha=4.0, targets="all linear+conv")
    assert memory[True] < 0.7 * memory[False], memory


# ---- the flow-matching objective against diffusers -------------------------------------------------
def _model_sampling(model, name, resolution):
    """The model's own schedule; Flux dev's shifted for `resolution` by ComfyUI's ModelSamplingFlux node."""
    if name == "flux-dev-tiny":
        from comfy_extras.nodes_model_advanced import ModelSamplingFlux

        model = ModelSamplingFlux().patch(model, 1.15, 0.5, resolution, resolution)[0]
    return model.get_model_object("model_sampling")


def _scheduler(name, resolution, unshifted):
    """diffusers' scheduler as the model's pipeline configures it, its sigmas set at the unshifted times."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if name == "flux-dev-tiny":  # FLUX.1-dev's scheduler config: shift by the image's token count
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096)
        scheduler.set_timesteps(sigmas=unshifted.tolist(), mu=calculate_shift((resolution // 16) ** 2))
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if name == "sd35-tiny" else 1.0)
        scheduler.set_timesteps(sigmas=unshifted.tolist())
    return scheduler


@pytest.mark.parametrize("name,resolution", [("sd35-tiny", 64), ("flux-dev-tiny", 64), ("flux-dev-tiny", 1024),
                                             ("flux-tiny", 64)])
def test_flow_matching_target_is_diffusers(dit, name, resolution):
    from driftless.trainers.objective import Coefficients, sample_sigmas

    model_sampling = _model_sampling(dit(name)[0], name, resolution)
    u = torch.tensor([0.0, 0.05, 0.21, 0.5, 0.77, 0.93, 0.999])  # the pack's noise levels (0 = clean end)
    sigma = sample_sigmas(model_sampling, u)
    n = len(model_sampling.sigmas)  # ComfyUI's training grid: σ at t = k/n, k = 1 … n, shifted
    unshifted = (torch.floor(u * n).clamp(max=n - 1) + 1) / n
    scheduler = _scheduler(name, resolution, unshifted)
    torch.testing.assert_close(sigma, scheduler.sigmas[:-1], rtol=1e-5, atol=1e-6)

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(len(u), 16, 8, 8, generator=g), torch.randn(len(u), 16, 8, 8, generator=g)
    coefficients = Coefficients.of(model_sampling, sigma)
    torch.testing.assert_close(coefficients.noisy(x0, noise), scheduler.scale_noise(x0, scheduler.timesteps, noise),
                               rtol=1e-5, atol=1e-5)
    # train_dreambooth_lora_sd3.py / _flux.py: target = noise - model_input, regressed by the raw model output
    torch.testing.assert_close(coefficients.target(x0, noise), noise - x0, rtol=1e-5, atol=1e-5)
    # and the pack reads the raw output back from apply_model's x0 (float64 here: near σ = 0 the float32 round trip
    # x_t - σ·F, then / σ, loses ~eps/σ)
    x_t, output = coefficients.noisy(x0, noise).double(), torch.randn(x0.shape, generator=g, dtype=torch.float64)
    denoised = model_sampling.calculate_denoised(sigma.double(), output, x_t)  # what apply_model returns for it
    torch.testing.assert_close(coefficients.prediction(denoised, x_t), output, rtol=1e-5, atol=1e-5)


# ---- families the pack does not train ---------------------------------------------------------------
def _stub(class_name):
    """A MODEL whose ComfyUI class (its model detection's verdict) is `class_name`: no weights, no work possible."""
    import comfy.supported_models as sm

    cls = getattr(sm, class_name)
    return types.SimpleNamespace(model=types.SimpleNamespace(model_config=cls.__new__(cls)))


def _all_families():
    import comfy.supported_models as sm

    return [cls.__name__ for cls in sm.models]


def test_every_family_comfyui_builds_is_supported_or_refused_by_name(comfy_host):
    from driftless.lora.targets import FAMILIES, UnsupportedModel, check_supported

    supported = {name for family in FAMILIES.values() for name in family.comfy_classes}
    names = _all_families()
    assert {"SD15", "SDXL", "SD3", "Flux", "FluxSchnell"} <= set(names)
    refused = [n for n in names if n not in supported]
    assert {"Flux2", "FluxInpaint", "Chroma", "HunyuanDiT", "AuraFlow", "PixArtSigma", "Lumina2"} <= set(refused)
    for name in names:
        if name in supported:
            assert name in check_supported(_stub(name)).comfy_classes
            continue
        with pytest.raises(UnsupportedModel) as refusal:
            check_supported(_stub(name))
        message = str(refusal.value)
        assert f"ComfyUI built it as '{name}'" in message and "Supported: SD1.x/SD2.x/SDXL UNet (SD15" in message
        assert "SD3/SD3.5 MMDiT (SD3)" in message and "Flux.1 (Flux, FluxSchnell)" in message


def test_train_lora_guider_and_attach_refuse_before_work(comfy_host, tiny_data):
    """Through Train LoRA's node, train_lora, the guider and attach (every node that hooks a LoRA attaches through
    it): a stub MODEL with no weights, so any work done before the refusal would fail otherwise."""
    from driftless.guidance.guider import make_guider
    from driftless.lora.adapter import attach
    from driftless.lora.targets import UnsupportedModel
    from driftless.nodes.train_lora import TrainLora
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.loop import train_lora

    defaults = {s.id: s.default for s in TrainLora.define_schema().inputs if getattr(s, "default", None) is not None}
    for name in ("Chroma", "HunyuanDiT"):
        with pytest.raises(UnsupportedModel, match=f"cannot train a LoRA on this model yet: ComfyUI built it as '{name}'"):
            TrainLora.execute(**{**defaults, "model": _stub(name), "training_data": None})
        with pytest.raises(UnsupportedModel, match=f"'{name}'"):
            train_lora(_stub(name), None, TrainConfig(steps=1))
        with pytest.raises(UnsupportedModel, match=f"cannot attach a LoRA to this model yet: ComfyUI built it as '{name}'"):
            attach(_stub(name), [])
        with pytest.raises(UnsupportedModel, match=f"cannot guide this model yet: ComfyUI built it as '{name}'"):
            make_guider(_stub(name), None, None, {}, cfg=5.0)
    # a real Flux model that ComfyUI reports as Flux2 (its class derives from Flux): refused by its own name
    model, _, _, data = tiny_data("flux-tiny", n=1)
    import comfy.supported_models as sm

    model.model.model_config.__class__ = sm.Flux2
    with pytest.raises(UnsupportedModel, match="'Flux2'"):
        train_lora(model, data, TrainConfig(steps=1))


if __name__ == "__main__":  # the bench-sized figures for docs/benchmarks.md
    import tempfile

    from driftless.headless import host

    host.boot(tempfile.mkdtemp(), cpu=True)
    from driftless.tinymodels.build import build_tiny_model

    torch.set_num_threads(2)
    for bench in ("flux-dev-bench", "sd35-bench"):
        model, clip, _ = build_tiny_model(bench, 0)
        data = _one_example(model, clip, 32)  # 256 px
        for preset in ("attention", "all linear+conv"):
            memory = measure_checkpointing(model, data, rank=16, alpha=16.0, targets=preset)
            print(f"{bench} 256 px, batch 1, rank 16, {preset}: peak step memory {memory[False] / 2**20:.1f} MiB "
                  f"without checkpointing, {memory[True] / 2**20:.1f} MiB with ({memory[True] / memory[False]:.2f}x)")
