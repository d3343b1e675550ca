"""Dynamic VRAM (ModelPatcherDynamic, ComfyUI 0.16 on): training, the frozen forward, the guider's merged LoRA and
its activation corrections, and a LoRA merged by the stock loader give what they give under ModelPatcher.

ComfyUI loads models dynamically on GPUs only: ModelPatcherDynamic hands a model whose load device is the CPU a
plain ModelPatcher. Here it is forced (`dynamic`): the stock loaders' class, `CoreModelPatcher`, points at a
subclass that stays dynamic on the CPU for diffusion models, and `aimdo_enabled` is set, so the tiny models are
built and loaded as the stock loaders build and load a checkpoint with dynamic VRAM on. The path that runs is the one
that differs from ModelPatcher: every comfy.ops layer casts its weight at forward time, weight patches (a merged
LoRA) are LowVramPatch functions applied to the cast weight, small layers are pre-loaded as patched copies (the
originals kept as backups), nothing is patched in place. What a CPU cannot reach (the GPU's virtual weight buffer,
pinned host memory, offload streams) is for tools/gpu_check.sh, which runs this file with dynamic VRAM really on;
the fixture then forces nothing.

On the CPU every comparison with ModelPatcher is exact (torch.equal): both sides run the same fp32 arithmetic on one
thread (the cast of an fp32 weight to fp32 is the weight itself, and a patch computes what ModelPatcher's in-place
patching computes). Against the merged LoRA (or ComfyUI's hooks) our activation LoRA sums in another order: relative
1e-5, as tests/comfy/test_guider.py. On a GPU see `_same`.
"""

import contextlib
import importlib
from dataclasses import dataclass

import pytest
import torch

from driftless.trainers.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("sd15-tiny", "sdxl-tiny")
FAST = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.2, targets="all linear+conv")


def _cpu_dynamic_class():
    """ModelPatcherDynamic that stays dynamic on the CPU for diffusion models: its constructor's reroute to
    ModelPatcher is skipped (for clones too, which are built with the instance's class), and `partially_unload` does
    there what it does when no weight is in GPU memory (nothing to free from the virtual buffer; the pre-loaded
    copies dropped) instead of asserting a GPU; and each layer's weight patches are applied as its weight is cast, as
    they are on a GPU (see `_apply_patches_at_cast`). Nothing else is changed.

    Text encoders keep the reroute: on the CPU, CLIP loads its text encoder as it builds it (its initial device is its
    load device), before the tiny model's weights are written, and a dynamic load keeps the unwritten originals of the
    small layers as backups. With dynamic VRAM on a GPU a text encoder starts on its offload device and is not loaded
    then."""
    import comfy.model_base
    import comfy.model_patcher as mp

    class CpuModelPatcherDynamic(mp.ModelPatcherDynamic):
        def __new__(cls, model=None, *args, **kwargs):
            if not isinstance(model, comfy.model_base.BaseModel):
                return mp.ModelPatcher(model, *args, **kwargs)
            return object.__new__(cls)

        def load(self, *args, **kwargs):
            super().load(*args, **kwargs)
            if self._vbar_get() is None:
                _apply_patches_at_cast(self.model)

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            if self.load_device != torch.device("cpu"):
                return super().partially_unload(device_to, memory_to_free, force_patch_weights)
            assert not force_patch_weights
            return self.restore_loaded_backups() if memory_to_free > 0 else 0

    return CpuModelPatcherDynamic


def _apply_patches_at_cast(model) -> None:
    """The dynamic load attaches each large layer's weight patches (a merged LoRA) as `weight_lowvram_function`, which
    only the GPU's cast path applies (comfy.ops, through the layer's virtual buffer: the cast weight, then that
    function, then `weight_function`); the CPU's cast path, which ComfyUI never uses for a dynamic model, applies
    `weight_function` alone and would drop them. Put each first in the layer's `weight_function`: the same order on
    the same cast weight."""
    for module in model.modules():
        for name in ("weight", "bias"):
            patch = getattr(module, f"{name}_lowvram_function", None)
            if patch is not None and patch not in getattr(module, f"{name}_function"):
                setattr(module, f"{name}_function", [patch, *getattr(module, f"{name}_function")])


def _load_aimdo_library() -> None:
    """comfy_aimdo's library, as main.py loads it before ComfyUI's imports (it loads on a CPU-only machine too; its
    devices are never initialised here). Its modules bound `lib` when first imported: bind them again."""
    import comfy_aimdo.control

    if comfy_aimdo.control.lib is None and not comfy_aimdo.control.init():
        pytest.fail("comfy_aimdo's library did not load: ModelPatcherDynamic needs its host buffers")
    for name in ("host_buffer", "model_vbar", "vram_buffer", "model_mmap"):
        module = importlib.import_module(f"comfy_aimdo.{name}")
        if module.lib is None:
            importlib.reload(module)


@pytest.fixture
def dynamic(comfy_host, monkeypatch):
    """The stock loaders build models with ModelPatcherDynamic: for real where dynamic VRAM is on (a GPU booted by
    tools/gpu_check.sh), else forced on the CPU, with `aimdo_enabled` set as main.py sets it (comfy.ops layers built
    without a state dict then get no weights until one is loaded: the tiny models are built with
    comfy_host.eager_weights). Skips where the release has no dynamic VRAM (0.3.75)."""
    import comfy.model_management
    import comfy.model_patcher

    from driftless import comfy_host as seam

    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip(f"ComfyUI {comfy_host.version} has no ModelPatcherDynamic (dynamic VRAM came with 0.16)")
    if not seam.dynamic_vram_enabled():
        import comfy.memory_management  # 0.16 on

        _load_aimdo_library()
        monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", _cpu_dynamic_class())
        monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", True)  # as main.py sets it beside the class
    yield seam.model_patcher_class()
    comfy.model_management.unload_all_models()  # no dynamic patcher stays loaded for the next test


@contextlib.contextmanager
def _loaders_use(patcher_class):
    """The stock loaders' class set to `patcher_class` for the duration."""
    import comfy.model_patcher

    previous = comfy.model_patcher.CoreModelPatcher
    comfy.model_patcher.CoreModelPatcher = patcher_class
    try:
        yield
    finally:
        comfy.model_patcher.CoreModelPatcher = previous


@dataclass
class World:
    """One tiny model (MODEL, CLIP, VAE) and its training data, built by one patcher class."""

    model: object
    clip: object
    vae: object
    data: object  # TrainingData: two photos, one caption

    def encode(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))


def _world(tiny_data, architecture: str, patcher_class) -> World:
    with _loaders_use(patcher_class):
        return World(*tiny_data(architecture))


def _pair(tiny_data, architecture: str, dynamic_class) -> tuple[World, World]:
    """The same seeded tiny model and data twice: under ModelPatcher, and under ModelPatcherDynamic (checked)."""
    import comfy.model_patcher

    from driftless.comfy_host import is_dynamic

    plain = _world(tiny_data, architecture, comfy.model_patcher.ModelPatcher)
    dyn = _world(tiny_data, architecture, dynamic_class)
    assert not is_dynamic(plain.model) and is_dynamic(dyn.model)
    assert torch.equal(plain.data.latents, dyn.data.latents)  # the VAE and
    assert torch.equal(plain.data.conditionings[0][0][0], dyn.data.conditionings[0][0][0])  # text encoder agree
    return plain, dyn


def _lora(model, seed: int = 0) -> dict:
    """A LoRA with non-zero B on every attention and feed-forward layer (ComfyUI-native keys)."""
    from driftless.lora.adapter import LoraAdapter

    g = torch.Generator().manual_seed(seed)
    adapter = LoraAdapter.for_model(model.model.diffusion_model, "attention+ff", 4, 4.0, g)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * 0.2)
    return adapter.lora_state_dict()


def _close(a, b, rel=1e-5):
    """fp32 rounding only: the random tiny model's samples reach hundreds, so compare relative to that."""
    a, b = a.float().cpu(), b.float().cpu()
    assert (a - b).abs().max() <= rel * b.abs().max(), ((a - b).abs().max(), b.abs().max())


def _on_gpu() -> bool:
    import comfy.model_management

    return comfy.model_management.get_torch_device().type != "cpu"


GPU_REL = 2e-3  # see _same


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    """The dynamic result `a` equals ModelPatcher's `b`: bit for bit on the CPU. On a GPU to 2e-3 of the larger
    magnitude: ModelPatcher merges weight patches there in fp16 (comfy.model_management.lora_compute_dtype) where the
    dynamic cast patches in the weight's fp32, and cuDNN's backward kernels are not deterministic; a dropped or
    doubled LoRA moves the result by tens of percent (measured here: 0.33 of the sample's magnitude)."""
    if _on_gpu():
        _close(a, b, GPU_REL)
    else:
        assert torch.equal(a, b), ((a - b).abs().max(), b.abs().max())


def _sample(guider, model, seed=5, steps=4):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    latent = torch.zeros(1, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    noise = Noise_RandomNoise(seed).generate_noise({"samples": latent})
    with torch.inference_mode():  # as the executor runs every node
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True,
                             seed=seed).cpu()


def _cfg(model, world: World, cfg=4.0):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(world.encode("a photo of sks dog"), world.encode(""))
    guider.set_cfg(cfg)
    return guider


def _cast_time_patches(model) -> int:
    """How many layers of the loaded `model` get their weight patches applied as the weight is cast (LowVramPatch)."""
    return sum(getattr(m, "weight_lowvram_function", None) is not None for m in model.model.diffusion_model.modules())


def _regularizers(name: str) -> list:
    if name == "none":
        return []
    from driftless.trainers.regularizers.dco import DCO

    return [DCO(mode="add", weight=1.0)]  # reads the frozen forward (LoRA at strength 0) every step


def test_off_on_the_cpu_and_enabled_only_before_comfyui_loads(comfy_host):
    """On the CPU the stock loaders use ModelPatcher; turning dynamic VRAM on once ComfyUI's model management is
    loaded is refused, saying when to do it (tools/gpu_check_boot.py does it before the boot)."""
    import comfy.model_patcher

    from driftless import comfy_host as seam

    if not _on_gpu():
        assert not seam.dynamic_vram_enabled() and seam.model_patcher_class() is comfy.model_patcher.ModelPatcher
    with pytest.raises(RuntimeError, match="must run before comfy.model_management is imported"):
        seam.enable_dynamic_vram()


@pytest.mark.parametrize("architecture", FAMILIES)
@pytest.mark.parametrize("regularizer", ["none", "dco"])
def test_training_matches_model_patcher(dynamic, tiny_data, architecture, regularizer):
    """Same seed, same model: bit-identical losses and LoRA, with and without the frozen forward in each step."""
    from driftless.comfy_host import is_dynamic
    from driftless.trainers.loop import train_lora

    plain, dyn = _pair(tiny_data, architecture, dynamic)
    config = TrainConfig(steps=4, **FAST)
    ours = train_lora(dyn.model, dyn.data, config, _regularizers(regularizer))
    reference = train_lora(plain.model, plain.data, config, _regularizers(regularizer))
    assert is_dynamic(ours.model)
    _same(torch.tensor(ours.losses), torch.tensor(reference.losses))
    lora, expected = ours.adapter.lora_state_dict(), reference.adapter.lora_state_dict()
    assert lora.keys() == expected.keys()
    for key in lora:
        _same(lora[key], expected[key])
    assert any(v.abs().max() > 0 for k, v in lora.items() if k.endswith("lora_up.weight"))  # the LoRA moved


@pytest.mark.parametrize("merged", [False, True], ids=["base", "merged_lora"])
def test_frozen_forward_is_the_model_it_was_given(dynamic, tiny_data, merged):
    """After training steps, the LoRA at strength 0 predicts exactly what the input MODEL predicts (a MODEL carrying
    a stock-merged LoRA included, whose patches the dynamic loader applies at cast time), at strength 1 not; and the
    input MODEL predicts under dynamic loading what it predicts under ModelPatcher."""
    import comfy.model_management
    import comfy.sd

    from driftless.trainers.loop import TrainingRun, frozen_prediction
    from driftless.trainers.objective import Coefficients

    def given(world):
        if not merged:
            return world.model
        return comfy.sd.load_lora_for_models(world.model, None, _lora(world.model), 0.7, 0.0)[0]

    def predict(model, x_t, sigma, inputs, coefficients):
        comfy.model_management.load_models_gpu([model])  # the MODEL itself, as a sampler loads it
        with torch.no_grad():
            return coefficients.prediction(model.model.apply_model(x_t, sigma, **inputs).float(), x_t)

    plain, dyn = _pair(tiny_data, "sd15-tiny", dynamic)
    model = given(dyn)
    run = TrainingRun(model, dyn.data, TrainConfig(steps=3, **FAST))
    for _ in range(3):
        run.step()
    if merged:
        assert _cast_time_patches(run.clone) > 0  # the merged LoRA is applied at cast time, not in place
    g = torch.Generator().manual_seed(1)
    x_t, sigma = (torch.randn(1, 4, 8, 8, generator=g) * 3).to(run.device), torch.tensor([2.5], device=run.device)
    inputs = run.cond_inputs[0]
    coefficients = Coefficients.of(run.model_sampling, sigma)
    frozen = frozen_prediction(run, x_t, sigma, inputs, coefficients)
    with torch.no_grad():
        trained = coefficients.prediction(run.forward(x_t, sigma, inputs), x_t)
    base = predict(model, x_t, sigma, inputs, coefficients)
    assert torch.equal(frozen, base)
    assert (trained - base).abs().max() > 1e-4 * base.abs().max()
    _same(base, predict(given(plain), x_t, sigma, inputs, coefficients))


@pytest.mark.parametrize("architecture", FAMILIES)
@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_guider_matches_model_patcher_and_the_hooks_oracle(dynamic, tiny_data, architecture, s):
    """The Personalization Guider (LoRA merged at 1, the null branch through W + s·Δ) samples on the dynamic model
    what it samples under ModelPatcher, and that equals ComfyUI's conditioning-hooks construction (hooks need
    ModelPatcher: ModelPatcherDynamic refuses weight hooks). The dynamic model casts its weights at each forward, so
    its layers correct the null branch on activations (guidance/branch_weights.py); with ModelPatcher doing the same
    (`split_weights=False`) the two are bit for bit equal on the CPU, and with its default second weight per Linear
    layer equal to float rounding."""
    import comfy.hooks
    import comfy.samplers

    from driftless.guidance.guider import make_guider

    plain, dyn = _pair(tiny_data, architecture, dynamic)
    lora = _lora(plain.model)
    samples = [_sample(make_guider(w.model, w.encode("a photo of sks dog"), w.encode(""), lora, cfg=4.0,
                                   s_start=s, s_end=s, split_weights=split), w.model)
               for w, split in ((dyn, True), (plain, False), (plain, True))]
    _same(samples[0], samples[1])
    _close(samples[0], samples[2], GPU_REL if _on_gpu() else 1e-5)
    positive, null = plain.encode("a photo of sks dog"), plain.encode("")
    oracle = comfy.samplers.CFGGuider(plain.model)
    oracle.set_conds(comfy.hooks.set_hooks_for_conditioning(positive, comfy.hooks.create_hook_lora(lora, 1.0, 0.0)),
                     comfy.hooks.set_hooks_for_conditioning(null, comfy.hooks.create_hook_lora(lora, s, 0.0)) if s > 0
                     else null)
    oracle.set_cfg(4.0)
    _close(samples[0], _sample(oracle, plain.model), GPU_REL if _on_gpu() else 1e-5)


@pytest.mark.parametrize("architecture", FAMILIES)
def test_stock_lora_loader_on_the_dynamic_model_equals_our_activation_lora(dynamic, tiny_data, comfy_host, architecture):
    """A LoRA file through the stock LoraLoaderModelOnly onto the dynamic MODEL: applied at cast time (its weights
    untouched in place), it samples what our activation LoRA at strength 1 samples on the same model (relative
    1e-5), and exactly what LoraLoader gives under ModelPatcher."""
    import comfy.model_management
    import nodes

    from driftless.lora.adapter import LoraAdapter, attach
    from driftless.lora.files import LoraWeights, save_lora

    plain, dyn = _pair(tiny_data, architecture, dynamic)
    lora = _lora(dyn.model)
    path = save_lora(LoraWeights(lora, {}), comfy_host.base_directory / "models" / "loras", f"dynamic/{architecture}")
    name = path.relative_to(comfy_host.base_directory / "models" / "loras").as_posix()
    loader = nodes.LoraLoaderModelOnly()
    merged, merged_plain = (loader.load_lora_model_only(w.model, name, 1.0)[0] for w in (dyn, plain))
    weights_before = {k: v.clone() for k, v in dyn.model.model.diffusion_model.state_dict().items()}
    merged_sample = _sample(_cfg(merged, dyn), merged)
    comfy.model_management.load_models_gpu([merged])
    assert _cast_time_patches(merged) > 0
    after = dyn.model.model.diffusion_model.state_dict()
    patched = [k.removeprefix("diffusion_model.") for k in merged.patches]
    untouched = [k for k in patched if torch.equal(weights_before[k], after[k].cpu())]
    # layers over 16 KB are patched at cast only (22 of 70 on sd15-tiny); ModelPatcher patches all 70 in place
    assert patched and untouched

    activation = dyn.model.clone()
    adapter = LoraAdapter.from_state_dict(activation.model.diffusion_model, lora)
    attach(activation, [adapter])
    _close(merged_sample, _sample(_cfg(activation, dyn), activation), GPU_REL if _on_gpu() else 1e-5)
    _same(merged_sample, _sample(_cfg(merged_plain, plain), merged_plain))


def test_fingerprint_of_a_merged_lora_model_matches_model_patcher(dynamic, tiny_data):
    """The base fingerprint (resume and concept-pool checks) of a MODEL carrying a merged LoRA: the same under both
    loaders, and not the bare base's (ModelPatcher's in-place weights carry the LoRA; the dynamic ones do not)."""
    import comfy.sd

    from driftless.lora.fingerprint import patcher_fingerprint

    plain, dyn = _pair(tiny_data, "sd15-tiny", dynamic)
    lora = _lora(plain.model)
    merged = [comfy.sd.load_lora_for_models(w.model, None, lora, 0.8, 0.0)[0] for w in (dyn, plain)]
    base = patcher_fingerprint(dyn.model)
    assert base == patcher_fingerprint(plain.model)
    assert patcher_fingerprint(merged[0]) == patcher_fingerprint(merged[1]) != base


def test_training_drops_weights_cast_while_sampling(dynamic, tiny_data):
    """A dynamic layer keeps the weight it cast to the GPU (trusted while its `_v_signature` says the pages are
    resident); one cast while sampling is an inference tensor, which backward cannot save. A TrainingRun drops every
    such copy before its first forward. The CPU has no GPU copies: here each comfy.ops layer is marked as holding
    one after sampling, and the run must clear every mark; the GPU check's graph test (sample, then train) is the
    real case."""
    from driftless.trainers.loop import TrainingRun

    world = _world(tiny_data, "sd15-tiny", dynamic)
    _sample(_cfg(world.model, world), world.model)
    layers = [m for m in world.model.model.diffusion_model.modules() if hasattr(m, "comfy_cast_weights")]
    if _on_gpu():
        assert any(getattr(layer, "_v_signature", None) is not None for layer in layers)
    else:
        for layer in layers:
            layer._v_signature = "resident"
    run = TrainingRun(world.model, world.data, TrainConfig(steps=1, **FAST))
    assert [layer for layer in layers if getattr(layer, "_v_signature", None) is not None] == []
    assert len(layers) > 100 and torch.isfinite(torch.tensor(run.step()))


def test_graph_after_sampling_trains_and_guides_as_under_model_patcher(dynamic, run_prompt):
    """One graph through ComfyUI's executor (inference mode, as the server runs it; the tiny model node built under
    the loaders' class): sample the tiny model, train a LoRA on the sample, guide with it. The dynamic run saves the
    same images as the ModelPatcher run (to one 8-bit level on the CPU)."""
    import comfy.model_patcher
    import numpy as np
    from PIL import Image

    def run(patcher_class, prefix):
        with _loaders_use(patcher_class):
            result = run_prompt(_graph(prefix))
        assert result.success, result.error
        return [np.asarray(Image.open(f)) for f in sorted(result.files)]

    ours, reference = run(dynamic, "dyn"), run(comfy.model_patcher.ModelPatcher, "plain")
    assert len(ours) == len(reference) == 2
    for a, b in zip(ours, reference):  # 8-bit images: on a GPU (see _same) a few levels; on the CPU the guider's
        # null branch takes W + s·Δ under ModelPatcher and an activation correction under dynamic loading: 1 level
        assert np.abs(a.astype(int) - b).max() <= (8 if _on_gpu() else 1)


def _graph(prefix: str) -> dict:
    """Tiny model -> KSampler (base) -> Train LoRA (3 steps) -> Personalization Guider -> sample; both images saved."""
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture="sd15-tiny", seed=0)
    pos = g.node("CLIPTextEncode", id="pos", clip=model.out(1), text="a photo of sks mug on a table")
    neg = g.node("CLIPTextEncode", id="neg", clip=model.out(1), text="")
    latent = g.node("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    base = g.node("KSampler", id="base", model=model.out(0), positive=pos.out(0), negative=neg.out(0),
                  latent_image=latent.out(0), seed=0, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal",
                  denoise=1.0)
    base_image = g.node("VAEDecode", id="base_decode", samples=base.out(0), vae=model.out(2))
    g.node("SaveImage", id="base_save", images=base_image.out(0), filename_prefix=f"{prefix}_a_base")
    data = g.node("DriftlessTrainingData", id="data", clip=model.out(1), captions="a photo of sks mug",
                  images=base_image.out(0), vae=model.out(2))
    train = g.node(
        "DriftlessTrainLoRA", id="train", model=model.out(0), training_data=data.out(0), steps=3, learning_rate=1e-2,
        rank=4, alpha=4.0, target_layers="attention", batch_size=1, gradient_accumulation=1, optimizer="AdamW",
        lr_schedule="constant", warmup_steps=0, training_dtype="fp32", gradient_checkpointing=False, seed=0,
        null_prompt_dropout=0.2, min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0,
        run_name=f"{prefix}_dynamic", checkpoint_every=0,
    )
    guider = g.node("DriftlessPersonalizationGuider", id="guider", model=train.out(0), lora=train.out(1),
                    positive=pos.out(0), clip=model.out(1), cfg=4.0, weak_strength=0.3, schedule="constant",
                    weak_strength_end=0.3, start=0.0, end=1.0, mode="personalization")
    noise = g.node("RandomNoise", id="noise", noise_seed=1)
    sampler = g.node("KSamplerSelect", id="sampler_select", sampler_name="euler")
    sigmas = g.node("BasicScheduler", id="sigmas", model=model.out(0), scheduler="normal", steps=3, denoise=1.0)
    out = g.node("SamplerCustomAdvanced", id="sample", noise=noise.out(0), guider=guider.out(0),
                 sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=latent.out(0))
    image = g.node("VAEDecode", id="decode", samples=out.out(0), vae=model.out(2))
    g.node("SaveImage", id="save", images=image.out(0), filename_prefix=f"{prefix}_b_guided")
    return g.finalize()
