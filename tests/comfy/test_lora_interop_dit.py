"""LoRA files for SD3.5- and Flux-shaped models, checked against ComfyUI's own loader and diffusers + peft.

Each tiny DiT has a diffusers twin (`SD3Transformer2DModel` / `FluxTransformer2DModel` holding the same weights,
moved with ComfyUI's `mmdit_to_diffusers` / `flux_to_diffusers` maps). The LoRAs here are seeded random ones
(up ≠ 0, mixed ranks and alphas) on every linear and conv layer of the model, or on a target preset's layers:
- the ComfyUI-native file and the kohya export load in the stock LoRA loader with no key left unloaded, and
  the merged model computes what the pack's activation LoRA computes;
- the diffusers export (fused q/k/v split into diffusers' to_q/to_k/to_v, Flux's linear1 also into proj_mlp)
  loads through the pipelines' `load_lora_weights` and gives the twin ComfyUI's output to 1e-5 relative;
  ComfyUI's loader reads it too (the ai-toolkit layout);
- LoRAs made by peft on the twin (separate q/k/v LoRAs with their own A) import as one fused LoRA each and give
  ComfyUI the twin's output; every format imports back through Driftless Load LoRA and Train LoRA's
  initial_lora; a LoRA for another family is refused naming both.
"""

import copy
import logging

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

DITS = ["sd35-tiny", "flux-dev-tiny", "flux-tiny"]
# float32 through a small transformer; a LoRA moves these outputs by more than 1e-1 of their largest value
RELATIVE = 1e-5


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


class Inputs:
    """One fixed input of a tiny DiT, in ComfyUI's and in diffusers' calling conventions."""

    def __init__(self, name: str, seed: int = 0):
        from driftless.tinymodels.configs import CONFIGS

        self.cfg = CONFIGS[name]
        unet = self.cfg.unet_config()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(2, 16, 8, 8, generator=g)
        self.t = torch.tensor([0.3, 0.8])
        if self.cfg.family == "flux":
            self.context = torch.randn(2, 7, unet["context_in_dim"], generator=g)
            self.pooled = torch.randn(2, unet["vec_in_dim"], generator=g)
            self.guidance = torch.tensor([3.5, 2.0]) if self.cfg.guidance_embed else None
        else:
            self.context = torch.randn(2, 9, unet["context_embedder_config"]["params"]["in_features"], generator=g)
            self.pooled = torch.randn(2, unet["adm_in_channels"], generator=g)

    def forward(self, diffusion_model) -> torch.Tensor:
        """ComfyUI's diffusion model as it is (patched or hooked by the caller)."""
        with torch.no_grad():
            if self.cfg.family == "flux":
                return diffusion_model(self.x, self.t, self.context, y=self.pooled, guidance=self.guidance)
            return diffusion_model(self.x, self.t * 1000, self.context, y=self.pooled)

    def comfy(self, model_patcher, native_lora=None) -> torch.Tensor:
        """ComfyUI's output with the LoRA on activations (the adapter the trainer and guider use)."""
        from driftless.lora.adapter import LoraAdapter

        diffusion_model = model_patcher.model.diffusion_model
        adapter = LoraAdapter.from_state_dict(diffusion_model, native_lora) if native_lora is not None else None
        if adapter is not None:
            adapter.install(diffusion_model)
        try:
            return self.forward(diffusion_model)
        finally:
            if adapter is not None:
                adapter.remove()

    def merged(self, patcher) -> torch.Tensor:
        """ComfyUI's output with the patches of a stock-loaded LoRA merged into the weights."""
        patcher.patch_model()
        try:
            return self.forward(patcher.model.diffusion_model)
        finally:
            patcher.unpatch_model()

    def diffusers(self, twin) -> torch.Tensor:
        from driftless.tinymodels.diffusers_twin import flux_ids, pack_latents, unpack_latents

        with torch.no_grad():
            if self.cfg.family == "flux":
                img_ids, txt_ids = flux_ids(4, 4, self.context.shape[1])
                packed = twin(hidden_states=pack_latents(self.x), encoder_hidden_states=self.context,
                              pooled_projections=self.pooled, timestep=self.t, img_ids=img_ids, txt_ids=txt_ids,
                              guidance=self.guidance).sample
                return unpack_latents(packed, 8, 8)
            return twin(hidden_states=self.x, encoder_hidden_states=self.context, pooled_projections=self.pooled,
                        timestep=self.t * 1000).sample


_MODELS = {}


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _MODELS.clear()  # before interpreter shutdown, where ComfyUI's ModelPatcher.__del__ cannot run


def _model(name):
    """(ComfyUI model, its layout, a fresh diffusers twin); the first two are shared, read-only."""
    from driftless.lora.formats.layout import layout_of
    from driftless.tinymodels.build import build_unet
    from driftless.tinymodels.configs import CONFIGS
    from driftless.tinymodels.diffusers_twin import diffusers_twin

    if name not in _MODELS:
        model = build_unet(CONFIGS[name], 0)
        _MODELS[name] = model, layout_of(model), diffusers_twin(model, name)
    model, layout, twin = _MODELS[name]
    return model, layout, copy.deepcopy(twin)


def random_lora(layout, modules=None, seed=0) -> dict:
    """A native LoRA on `modules` (default: every linear and conv layer): rank 4 with alpha 8 (scale 2, exact in
    float, so a folded scale is bit-exact too), every fifth layer rank 3 with alpha 1.5 (scale 0.5)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, module in enumerate(sorted(modules or layout.shapes)):
        shape = layout.shapes[module]
        rank, alpha = (3, 1.5) if i % 5 == 0 else (4, 8.0)
        out[f"diffusion_model.{module}.lora_down.weight"] = 0.1 * torch.randn(rank, *shape[1:], generator=g)
        out[f"diffusion_model.{module}.lora_up.weight"] = 0.1 * torch.randn(shape[0], rank, *([1] * (len(shape) - 2)),
                                                                            generator=g)
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
    return out


def _preset_lora(model, layout, preset, seed=0) -> dict:
    from driftless.lora.targets import select_targets

    return random_lora(layout, list(select_targets(model.model.diffusion_model, preset)), seed)


def _stock_load(comfy_host, model, lora_file, caplog):
    """The stock LoraLoaderModelOnly node on a file in models/loras: the patched model, after checking that
    ComfyUI left no key of the file unloaded and no patch unapplied (it logs both)."""
    import nodes

    loras = comfy_host.base_directory / "models" / "loras"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_file.relative_to(loras).as_posix(), 1.0)
    problems = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert problems == [], problems[:5]
    return patched


def _save(comfy_host, lora, name):
    from driftless.lora.files import save_lora

    return save_lora(lora, comfy_host.base_directory / "models" / "loras" / "interop_dit", name)


def _pipeline(name, twin):
    """A diffusers pipeline around the twin, the other components left out: enough for `load_lora_weights`."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    if name.startswith("flux"):
        return FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=twin)
    return StableDiffusion3Pipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None, transformer=twin)


# ---- layout ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DITS)
def test_every_layer_has_diffusers_and_kohya_names_that_fit_the_twin(comfy_host, name):
    _, layout, twin = _model(name)
    twin_layers = {n: m for n, m in twin.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert layout.diffusers_component == "transformer" and layout.kohya_spelling == "ldm"
    covered = set()
    for module, shape in layout.shapes.items():
        parts = layout.diffusers_parts(module)
        assert sum(p.rows for p in parts) == shape[0]
        for part in parts:
            assert tuple(twin_layers[part.name].weight.shape) == (part.rows, *shape[1:]), part
            covered.add(part.name)
        assert layout.kohya_names[layout.kohya_name(module)] == module
    assert covered == set(twin_layers)  # every diffusers layer is one ComfyUI layer or a block of one
    fused = {m: [p.name.rsplit(".", 1)[-1] for p in parts] for m, parts in layout.diffusers_splits.items()}
    swapped = sorted(m for m, parts in layout.diffusers_splits.items() if parts[0].swap_halves)
    if name.startswith("flux"):
        assert fused["double_blocks.0.img_attn.qkv"] == ["to_q", "to_k", "to_v"]
        assert fused["double_blocks.1.txt_attn.qkv"] == ["add_q_proj", "add_k_proj", "add_v_proj"]
        assert fused["single_blocks.0.linear1"] == ["to_q", "to_k", "to_v", "proj_mlp"]
        assert layout.diffusers_name("single_blocks.0.linear2") == "single_transformer_blocks.0.proj_out"
        assert swapped == ["final_layer.adaLN_modulation.1"]
        assert ("guidance_in.in_layer" in layout.shapes) == (name == "flux-dev-tiny")
    else:
        assert fused["joint_blocks.0.x_block.attn.qkv"] == ["to_q", "to_k", "to_v"]
        assert fused["joint_blocks.0.x_block.attn2.qkv"] == ["to_q", "to_k", "to_v"]  # SD3.5's dual attention
        assert [p.name for p in layout.diffusers_parts("joint_blocks.1.context_block.attn.qkv")] == [
            "transformer_blocks.1.attn.add_q_proj", "transformer_blocks.1.attn.add_k_proj",
            "transformer_blocks.1.attn.add_v_proj"]
        assert layout.diffusers_name("joint_blocks.0.x_block.attn.proj") == "transformer_blocks.0.attn.to_out.0"
        assert layout.diffusers_name("joint_blocks.0.context_block.attn.proj") == "transformer_blocks.0.attn.to_add_out"
        # SD3's last text-stream block only feeds attention: its modulation is diffusers' AdaLayerNormContinuous
        assert swapped == ["final_layer.adaLN_modulation.1", "joint_blocks.1.context_block.adaLN_modulation.1"]


# ---- ComfyUI-native and kohya files in the stock loader --------------------------------------------
def _presets():
    from driftless.lora.targets import TARGET_PRESETS

    return sorted(TARGET_PRESETS)


@pytest.mark.parametrize("preset", ["every layer", *_presets()])
@pytest.mark.parametrize("name", DITS)
def test_native_file_in_the_stock_lora_loader(comfy_host, caplog, name, preset):
    """Every key applied by LoraLoaderModelOnly, and the merged model computes the pack's activation LoRA."""
    from driftless.lora.files import load_lora

    model, layout, _ = _model(name)
    native = random_lora(layout) if preset == "every layer" else _preset_lora(model, layout, preset)
    inputs = Inputs(name)
    want = inputs.comfy(model, native)
    assert relative_error(inputs.comfy(model), want) > 1e-2  # the LoRA matters: the tolerance means something
    path = _save(comfy_host, native, f"{name}_{preset.replace(' ', '_').replace('+', '_')}_native")
    assert set(load_lora(path)) == set(native)
    patched = _stock_load(comfy_host, model, path, caplog)
    assert len(patched.patches) == len(native) // 3
    assert relative_error(inputs.merged(patched), want) < RELATIVE


@pytest.mark.parametrize("name", DITS)
def test_kohya_export_in_the_stock_lora_loader_and_back(comfy_host, caplog, name):
    """sd-scripts' layout: ComfyUI's (BFL's, SAI's) layer names with `_`, fused q/k/v as one layer."""
    from driftless.lora.files import load_lora
    from driftless.lora.formats import export, to_native

    model, layout, _ = _model(name)
    native = random_lora(layout, seed=1)
    inputs = Inputs(name)
    path = _save(comfy_host, export(native, layout, "kohya"), f"{name}_kohya")
    kohya = load_lora(path)
    if name.startswith("flux"):
        for stem in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_1_txt_mlp_2",
                     "lora_unet_single_blocks_0_linear1", "lora_unet_single_blocks_1_linear2", "lora_unet_img_in",
                     "lora_unet_final_layer_adaLN_modulation_1"):
            assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= set(kohya), stem
        assert kohya.metadata["ss_network_module"] == "networks.lora_flux"
        assert kohya.metadata["ss_base_model_version"] == "flux1"
        assert kohya.metadata["modelspec.architecture"] == ("flux-1-dev/lora" if name == "flux-dev-tiny"
                                                            else "flux-1-schnell/lora")
    else:
        for stem in ("lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_x_block_attn2_qkv",
                     "lora_unet_joint_blocks_1_context_block_attn_qkv", "lora_unet_x_embedder_proj"):
            assert f"{stem}.lora_up.weight" in kohya, stem
        assert kohya.metadata["ss_network_module"] == "networks.lora_sd3"
    assert kohya.metadata["ss_network_dim"] == 4 and kohya.metadata["ss_network_alpha"] == 8
    patched = _stock_load(comfy_host, model, path, caplog)
    assert len(patched.patches) == len(native) // 3
    want = inputs.comfy(model, native)
    assert relative_error(inputs.merged(patched), want) < RELATIVE
    back = to_native(kohya, layout)
    assert back.metadata["lora_format"] == "kohya"
    assert set(back) == set(native) and all(torch.equal(back[k], native[k]) for k in native)


# ---- diffusers / PEFT ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DITS)
def test_diffusers_export_through_the_pipelines_load_lora_weights(comfy_host, name):
    """`FluxPipeline` / `StableDiffusion3Pipeline.load_lora_weights(file)` on the twin: every tensor of the file
    becomes a peft layer of the twin, and the twin computes ComfyUI's output with the pack's LoRA."""
    from driftless.lora.files import load_lora
    from driftless.lora.formats import export
    from peft import get_peft_model_state_dict

    model, layout, twin = _model(name)
    native = random_lora(layout, seed=2)
    inputs = Inputs(name)
    want = inputs.comfy(model, native)
    assert relative_error(inputs.diffusers(twin), want) > 1e-1
    path = _save(comfy_host, export(native, layout, "diffusers"), f"{name}_diffusers")
    exported = load_lora(path)
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in exported)
    _pipeline(name, twin).load_lora_weights(str(path))
    (adapter,) = twin.peft_config  # the one adapter load_lora_weights added
    loaded = get_peft_model_state_dict(twin, adapter_name=adapter)
    assert {f"transformer.{k}" for k in loaded} == set(exported)
    for key, value in loaded.items():
        assert torch.equal(value, exported[f"transformer.{key}"]), key
    assert relative_error(inputs.diffusers(twin), want) < RELATIVE


@pytest.mark.parametrize("name", DITS)
def test_diffusers_export_splits_fused_layers_exactly(comfy_host, name):
    """A fused layer's LoRA (A: r×in, B: out×r) becomes its diffusers layers' LoRAs: each the same A, B's block of
    rows; the scale alpha/r moves into B (exact here: 2 and 0.5), alpha becomes r; the final modulation's B has
    its (shift, scale) halves swapped, as diffusers orders them. Imported back: the same tensors where alpha = r,
    the same function everywhere."""
    from driftless.lora.formats import export, to_native

    model, layout, _ = _model(name)
    native = random_lora(layout, seed=3)
    exported = export(native, layout, "diffusers")
    for module, parts in layout.diffusers_splits.items():
        down = native[f"diffusion_model.{module}.lora_down.weight"]
        up = native[f"diffusion_model.{module}.lora_up.weight"]
        scale = float(native[f"diffusion_model.{module}.alpha"]) / down.shape[0]
        for part in parts:
            rows = up[part.start:part.start + part.rows] * scale
            if part.swap_halves:
                rows = torch.cat(rows.chunk(2)[::-1])
            assert torch.equal(exported[f"transformer.{part.name}.lora_A.weight"], down), part.name
            assert torch.equal(exported[f"transformer.{part.name}.lora_B.weight"], rows), part.name
    import json

    config = json.loads(exported.raw_metadata["lora_adapter_metadata"])
    assert config["transformer.r"] == config["transformer.lora_alpha"] == 4
    assert config["transformer.alpha_pattern"] == config["transformer.rank_pattern"]  # scale 1 everywhere
    back = to_native(exported, layout)
    assert set(back) == set(native)
    inputs = Inputs(name)
    assert relative_error(inputs.comfy(model, back), inputs.comfy(model, native)) < 1e-6
    scale_one = {k: (torch.tensor(float(native[k.replace(".alpha", ".lora_down.weight")].shape[0]))
                     if k.endswith(".alpha") else v) for k, v in native.items()}
    again = to_native(export(scale_one, layout, "diffusers"), layout)
    assert all(torch.equal(again[k], scale_one[k]) for k in scale_one)  # split then joined: bit for bit


@pytest.mark.parametrize("name", DITS)
def test_diffusers_export_in_the_stock_lora_loader(comfy_host, caplog, name):
    """ComfyUI's loader reads the `transformer.`-prefixed diffusers (ai-toolkit) layout itself: each of to_q/to_k/
    to_v patches its rows of the fused weight; no key left, the same output."""
    from driftless.lora.formats import export

    model, layout, _ = _model(name)
    native = random_lora(layout, seed=4)
    inputs = Inputs(name)
    path = _save(comfy_host, export(native, layout, "diffusers"), f"{name}_diffusers_stock")
    patched = _stock_load(comfy_host, model, path, caplog)
    assert len(patched.patches) == len(native) // 3  # the row blocks patch the fused weights
    assert relative_error(inputs.merged(patched), inputs.comfy(model, native)) < RELATIVE


PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "proj_mlp", "proj_out", "ff.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear",
                "norm_out.linear"]
PEFT_VARIANTS = {
    # q, k, v with their own A (peft draws each), k with another rank and scale: the ranks concatenate, each
    # block's scale folded into its B; the modulations, with swapped halves in the final and SD3's last text one
    "patterns": {"target_modules": PEFT_TARGETS, "r": 4, "lora_alpha": 6, "rank_pattern": {"to_k": 2},
                 "alpha_pattern": {"to_k": 1}},
    # only q and v of the attention (a common choice): the k rows of the fused LoRA stay zero
    "q and v": {"target_modules": ["to_q", "to_v", "add_v_proj"], "r": 3, "lora_alpha": 3},
}


@pytest.mark.parametrize("variant", sorted(PEFT_VARIANTS))
@pytest.mark.parametrize("name", ["sd35-tiny", "flux-dev-tiny"])
def test_a_lora_made_by_peft_on_the_twin_joins_into_fused_layers(comfy_host, tmp_path, name, variant):
    """Saved by the pipeline's `save_lora_weights` with its LoraConfig; imported, the separate q/k/v LoRAs become one
    LoRA on the fused layer (A stacked, B block-diagonal), and ComfyUI computes the twin's output."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from driftless.lora.files import load_lora
    from driftless.lora.formats import to_native
    from peft import LoraConfig, get_peft_model_state_dict

    model, layout, twin = _model(name)
    inputs = Inputs(name)
    torch.manual_seed(5)  # peft draws A and B (init_lora_weights=False: B is not zero, so the LoRA acts)
    config = LoraConfig(init_lora_weights=False, **PEFT_VARIANTS[variant])
    twin.add_adapter(config)
    want = inputs.diffusers(twin)
    assert relative_error(inputs.comfy(model), want) > 1e-2
    pipeline = FluxPipeline if name.startswith("flux") else StableDiffusion3Pipeline
    pipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=get_peft_model_state_dict(twin),
                               transformer_lora_adapter_metadata=config.to_dict())
    native = to_native(load_lora(tmp_path / "pytorch_lora_weights.safetensors"), layout)
    qkv = "double_blocks.0.img_attn.qkv" if name.startswith("flux") else "joint_blocks.0.x_block.attn.qkv"
    down = native[f"diffusion_model.{qkv}.lora_down.weight"]
    up = native[f"diffusion_model.{qkv}.lora_up.weight"]
    width = up.shape[0] // 3
    if variant == "patterns":
        assert down.shape[0] == 4 + 2 + 4  # q, k, v ranks side by side
        assert torch.count_nonzero(up[:width, 4:]) == 0 and torch.count_nonzero(up[width:2 * width, :4]) == 0
    else:
        assert down.shape[0] == 3 + 3 and torch.count_nonzero(up[width:2 * width]) == 0  # no k LoRA
    assert relative_error(inputs.comfy(model, native), want) < RELATIVE


def test_a_flux_diffusers_export_with_peft_alone(comfy_host):
    """Without diffusers' loaders: LoraConfig from the file's metadata, peft's inject_adapter_in_model and
    set_peft_model_state_dict with the `transformer.` prefix removed."""
    import json

    from driftless.lora.formats import export
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    model, layout, twin = _model("flux-dev-tiny")
    inputs = Inputs("flux-dev-tiny")
    native = random_lora(layout, seed=8)
    exported = export(native, layout, "diffusers")
    config = json.loads(exported.raw_metadata["lora_adapter_metadata"])
    config = LoraConfig(**{k.removeprefix("transformer."): v for k, v in config.items()})
    inject_adapter_in_model(config, twin)
    result = set_peft_model_state_dict(twin, {k.removeprefix("transformer."): v for k, v in exported.items()})
    assert not result.unexpected_keys
    assert relative_error(inputs.diffusers(twin), inputs.comfy(model, native)) < RELATIVE


def test_a_flux_diffusers_file_with_per_layer_alphas(comfy_host, tmp_path):
    """kohya-converted Flux files in diffusers' layout carry `transformer.<layer>.alpha` keys (diffusers' Flux
    loader reads them as network alphas): imported with those scales, the twin's output through the pipeline."""
    from driftless.lora.files import load_lora, save_lora
    from driftless.lora.formats import to_native

    model, layout, twin = _model("flux-dev-tiny")
    inputs = Inputs("flux-dev-tiny")
    g = torch.Generator().manual_seed(6)
    tensors = {}
    for name, rows in (("transformer_blocks.0.attn.to_q", 64), ("transformer_blocks.0.attn.to_v", 64),
                       ("single_transformer_blocks.1.proj_mlp", 256), ("transformer_blocks.1.ff.net.2", 64)):
        fan_in = layout.shapes[layout.diffusers_part_names()[name][0]][1]
        tensors[f"transformer.{name}.lora_A.weight"] = 0.2 * torch.randn(2, fan_in, generator=g)
        tensors[f"transformer.{name}.lora_B.weight"] = 0.2 * torch.randn(rows, 2, generator=g)
        tensors[f"transformer.{name}.alpha"] = torch.tensor(1.0 if "to_v" in name else 4.0)
    path = save_lora(tensors, tmp_path, "alphas")
    _pipeline("flux-dev-tiny", twin).load_lora_weights(str(path))
    want = inputs.diffusers(twin)
    assert relative_error(inputs.comfy(model), want) > 1e-2
    native = to_native(load_lora(path), layout)
    assert relative_error(inputs.comfy(model, native), want) < RELATIVE


# ---- back into the pack ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["comfyui", "diffusers", "kohya"])
@pytest.mark.parametrize("name", ["sd35-tiny", "flux-dev-tiny"])
def test_every_format_imports_through_load_lora_and_initial_lora(comfy_host, name, fmt):
    """Written by Driftless Save LoRA (the model connected), read by Driftless Load LoRA with the model connected,
    without it (then the guider converts), and by Train LoRA's initial_lora: the same function as the LoRA saved."""
    from driftless.guidance.guider import adapter_for
    from driftless.lora.files import load_lora
    from driftless.nodes.lora_files import LoadLora, SaveLora
    from driftless.trainers.start import InitialLora

    model, layout, _ = _model(name)
    native = random_lora(layout, seed=7)
    inputs = Inputs(name)
    want = inputs.comfy(model, native)
    lora_name = SaveLora.execute(lora=native, filename=f"interop_dit/{name}_{fmt}_node", overwrite=True, format=fmt,
                                 model=model).result[0]
    converted = LoadLora.execute(lora_name=lora_name, model=model).result[0]
    assert converted.metadata["lora_format"] == fmt and set(converted) == set(native)
    assert relative_error(inputs.comfy(model, converted), want) < 1e-6
    as_is = LoadLora.execute(lora_name=lora_name).result[0]
    assert as_is.metadata["lora_format"] == fmt
    from_guider = adapter_for(model, as_is, "lora").lora_state_dict()
    assert all(torch.equal(from_guider[k], converted[k]) for k in converted)
    initial = InitialLora.of(model, load_lora(comfy_host.base_directory / "models" / "loras" / lora_name))
    assert all(torch.equal(initial.weights[k], converted[k]) for k in converted)


FAMILY_TEXT = {
    "sd35-tiny": "an SD3-style transformer (joint blocks)",
    "flux-dev-tiny": "a Flux-style transformer (double and single blocks)",
}


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers", "kohya"])
@pytest.mark.parametrize("source, target", [("sd35-tiny", "flux-dev-tiny"), ("flux-dev-tiny", "sd35-tiny")])
def test_a_lora_for_the_other_family_is_refused_naming_both(comfy_host, fmt, source, target):
    from driftless.lora.formats import LoraDoesNotFit, export, to_native
    from driftless.lora.formats.layout import FAMILY_NAMES

    _, source_layout, _ = _model(source)
    _, target_layout, _ = _model(target)
    for preset_modules in (None, [m for m in source_layout.shapes if m.endswith(("qkv", "linear1"))]):
        lora = export(random_lora(source_layout, preset_modules), source_layout, fmt)
        with pytest.raises(LoraDoesNotFit) as err:
            to_native(lora, target_layout)
        text = str(err.value)
        assert f"This is a {fmt} LoRA for {FAMILY_TEXT[source]}" in text, text
        assert f"the model is {FAMILY_NAMES[target_layout.family]}, {FAMILY_TEXT[target]}" in text, text


def test_unet_and_dit_loras_are_refused_on_each_other_and_dev_on_schnell(comfy_host):
    from driftless.lora.formats import LoraDoesNotFit, export, to_native
    from driftless.lora.formats.layout import layout_of
    from driftless.tinymodels.build import build_unet
    from driftless.tinymodels.configs import CONFIGS

    sd15 = layout_of(build_unet(CONFIGS["sd15-tiny"], 0))
    _, flux, _ = _model("flux-dev-tiny")
    _, schnell, _ = _model("flux-tiny")
    with pytest.raises(LoraDoesNotFit, match=r"for an SD1.x/SD2.x-style UNet.*the model is Flux, a Flux-style"):
        to_native(export(random_lora(sd15), sd15, "kohya"), flux)
    with pytest.raises(LoraDoesNotFit, match=r"for a Flux-style transformer.*the model is SD1.5, an SD1.x"):
        to_native(export(random_lora(flux), flux, "diffusers"), sd15)
    # Flux dev's guidance embedding is the one layer schnell lacks: the same family, another layout
    with pytest.raises(LoraDoesNotFit, match=r"34 of 36 LoRA layers match .*guidance_in.*like this Flux schnell model"):
        to_native(random_lora(flux), schnell)


def test_load_node_refuses_a_lora_for_the_other_family(comfy_host):
    from driftless.lora.formats import export
    from driftless.nodes.lora_files import LoadLora

    model, _, _ = _model("sd35-tiny")
    _, flux, _ = _model("flux-dev-tiny")
    path = _save(comfy_host, export(random_lora(flux), flux, "diffusers"), "flux_for_sd3")
    with pytest.raises(ValueError, match=r"interop_dit/flux_for_sd3.safetensors: does not fit this model.*"
                                         r"Flux-style transformer.*the model is SD3/SD3.5"):
        LoadLora.execute(lora_name=path.relative_to(comfy_host.base_directory / "models" / "loras").as_posix(),
                         model=model)


def test_a_lora_trained_here_on_flux_exports_to_diffusers_and_kohya(comfy_host, caplog, tmp_path):
    """Two steps of Train LoRA's loop on flux-dev-tiny (attention preset: fused qkv and linear1 whole): the
    diffusers export gives the twin ComfyUI's output through the pipeline, the kohya export the stock loader."""
    import numpy as np
    from driftless.lora.files import save_lora
    from driftless.lora.formats import export
    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.config import TrainConfig
    from driftless.trainers.data import TrainingData
    from driftless.trainers.loop import train_lora
    from skimage import data as images

    model, clip, vae = build_tiny_model("flux-dev-tiny", 0)
    photo = torch.from_numpy(np.asarray(images.chelsea()[:256:4, 100:356:4], dtype=np.float32) / 255.0)[None]
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    data = TrainingData(vae.encode(photo), [encode("a photo of sks cat")], encode(""), ["a photo of sks cat"])
    config = TrainConfig(steps=2, rank=4, alpha=8.0, learning_rate=5e-2, targets="attention", seed=1)
    native = train_lora(model, data, config).adapter.lora_state_dict()
    # compared on the shared model of the same seed: the training clone stays loaded (its hooks on `model`'s
    # modules) until ComfyUI loads another patcher, and these checks call the diffusion model directly
    base, layout, twin = _model("flux-dev-tiny")
    assert all(torch.equal(a, b) for a, b in zip(base.model.diffusion_model.state_dict().values(),
                                                  model.model.diffusion_model.state_dict().values()))
    inputs = Inputs("flux-dev-tiny")
    want = inputs.comfy(base, native)
    assert relative_error(inputs.comfy(base), want) > 1e-3  # trained: up is no longer zero
    _pipeline("flux-dev-tiny", twin).load_lora_weights(str(save_lora(export(native, layout, "diffusers"), tmp_path, "d")))
    assert relative_error(inputs.diffusers(twin), want) < RELATIVE
    patched = _stock_load(comfy_host, base, _save(comfy_host, export(native, layout, "kohya"), "trained_flux_kohya"),
                          caplog)
    assert relative_error(inputs.merged(patched), want) < RELATIVE
