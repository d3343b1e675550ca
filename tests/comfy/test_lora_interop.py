"""LoRA files in diffusers/PEFT and kohya formats, checked against diffusers + peft as the reference.

Each tiny model has a diffusers twin (a UNet2DConditionModel holding the same weights, moved with
ComfyUI's own unet_to_diffusers map). A LoRA trained here and exported must give the twin, loaded the
way `pipe.load_lora_weights` loads it, the same UNet output as ComfyUI with the LoRA (≤ 1e-5); a LoRA
made by peft on the twin must give ComfyUI the same output after import.
"""

import json

import pytest
import torch
from driftless.trainers.config import TrainConfig

ARCHITECTURES = ["sd15-tiny", "sdxl-tiny"]
# float32 through a small UNet, on CPU or GPU (another summation order): 1e-5 absolute plus 1e-4 relative; a
# LoRA moves these outputs by more than 1e-2
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


class Inputs:
    """One fixed UNet input, in ComfyUI's and in diffusers' calling conventions."""

    def __init__(self, name: str, seed: int = 0):
        from driftless.tinymodels.configs import CONFIGS
        from driftless.tinymodels.diffusers_twin import sdxl_adm

        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(2, 4, 8, 8, generator=g)
        self.t = torch.tensor([25.0, 700.0])
        self.context = torch.randn(2, 7, CONFIGS[name].context_dim, generator=g)
        self.y, self.added = None, {}
        if CONFIGS[name].family == "sdxl":
            text_embeds = torch.randn(2, CONFIGS[name].text_encoders["g"].hidden_size, generator=g)
            time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [96.0, 64.0, 8.0, 0.0, 64.0, 64.0]])
            self.added = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
            self.y = sdxl_adm(text_embeds, time_ids)

    def comfy(self, model_patcher, native_lora=None) -> torch.Tensor:
        """ComfyUI's UNet output, with the LoRA on activations (the adapter the trainer and guider use)."""
        from driftless.lora.adapter import LoraAdapter

        diffusion_model = model_patcher.model.diffusion_model
        adapter = LoraAdapter.from_state_dict(diffusion_model, native_lora) if native_lora is not None else None
        if adapter is not None:
            adapter.install(diffusion_model)
        try:
            with torch.no_grad():
                return diffusion_model(self.x, self.t, context=self.context, y=self.y)
        finally:
            if adapter is not None:
                adapter.remove()

    def diffusers(self, unet) -> torch.Tensor:
        with torch.no_grad():
            return unet(self.x, self.t, encoder_hidden_states=self.context, **self.added).sample


_TWINS = {}


@pytest.fixture(scope="module", autouse=True)
def _release_twins():
    yield
    _TWINS.clear()  # before interpreter shutdown, where ComfyUI's ModelPatcher.__del__ cannot run


def _twin(name):
    """(ComfyUI model, its layout, a fresh diffusers twin); the first two are shared, read-only."""
    import copy

    from driftless.tinymodels.build import build_unet
    from driftless.tinymodels.configs import CONFIGS
    from driftless.tinymodels.diffusers_twin import diffusers_twin
    from driftless.lora.formats.layout import layout_of

    if name not in _TWINS:
        model = build_unet(CONFIGS[name], 0)
        _TWINS[name] = model, layout_of(model), diffusers_twin(model, name)
    model, layout, unet = _TWINS[name]
    return model, layout, copy.deepcopy(unet)


def _load_in_diffusers(path, unet, name):
    """What `StableDiffusion(XL)Pipeline.load_lora_weights(path)` does to the pipeline's UNet."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    sdxl = name.startswith("sdxl")
    mixin = StableDiffusionXLLoraLoaderMixin if sdxl else StableDiffusionLoraLoaderMixin
    extra = {"unet_config": unet.config} if sdxl else {}
    state, alphas, metadata = mixin.lora_state_dict(str(path), return_lora_metadata=True, **extra)
    mixin.load_lora_into_unet(state, alphas, unet, metadata=metadata)
    return unet


@pytest.fixture(scope="module")
def trained(comfy_host):
    """{architecture: native LoRA trained here (rank 4, alpha 8, every linear and conv layer)}."""
    import numpy as np
    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.data import TrainingData
    from driftless.trainers.loop import train_lora
    from skimage import data as images

    photo = torch.from_numpy(np.asarray(images.chelsea()[:256:4, 100:356:4], dtype=np.float32) / 255.0)[None]
    out = {}
    for name in ARCHITECTURES:
        model, clip, vae = build_tiny_model(name, 0)
        encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
        data = TrainingData(vae.encode(photo), [encode("a photo of sks cat")], encode(""), ["a photo of sks cat"])
        config = TrainConfig(steps=4, rank=4, alpha=8.0, learning_rate=2e-2, targets="all linear+conv", seed=1)
        out[name] = train_lora(model, data, config).adapter.lora_state_dict()
    return out


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_diffusers_twin_computes_the_same_unet(comfy_host, name):
    model, layout, unet = _twin(name)
    inputs = Inputs(name)
    torch.testing.assert_close(inputs.diffusers(unet), inputs.comfy(model), **TOLERANCE)
    # every linear and conv layer of the UNet has a diffusers name and a kohya name in ComfyUI's maps
    assert set(layout.diffusers_names) == set(layout.shapes)
    assert all(layout.kohya_names[layout.kohya_name(m)] == m for m in layout.shapes)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_lora_trained_here_and_exported_gives_diffusers_the_same_output(comfy_host, trained, tmp_path, name, fmt):
    from driftless.lora.files import save_lora
    from driftless.lora.formats import export

    model, layout, unet = _twin(name)
    inputs = Inputs(name)
    native = trained[name]
    want = inputs.comfy(model, native)
    assert (want - inputs.comfy(model)).abs().max() > 1e-2  # the LoRA matters: the tolerance below means something
    path = save_lora(export(native, layout, fmt), tmp_path, f"{name}_{fmt}")
    got = inputs.diffusers(_load_in_diffusers(path, unet, name))
    torch.testing.assert_close(got, want, **TOLERANCE)


def test_a_diffusers_export_with_peft_alone(comfy_host, trained, tmp_path):
    """The README's recipe without diffusers' loaders: LoraConfig from the file's metadata, then peft's
    inject_adapter_in_model and set_peft_model_state_dict."""
    from driftless.lora.files import save_lora
    from driftless.lora.formats import export
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open

    model, layout, unet = _twin("sdxl-tiny")
    inputs = Inputs("sdxl-tiny")
    path = save_lora(export(trained["sdxl-tiny"], layout, "diffusers"), tmp_path, "peft_only")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        state = {k[len("unet."):]: f.get_tensor(k) for k in f.keys()}
    config = LoraConfig(**{k[5:]: v for k, v in json.loads(metadata["lora_adapter_metadata"]).items()})
    inject_adapter_in_model(config, unet)
    set_peft_model_state_dict(unet, state)
    torch.testing.assert_close(inputs.diffusers(unet), inputs.comfy(model, trained["sdxl-tiny"]), **TOLERANCE)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_then_import_gives_back_the_same_tensors(comfy_host, trained, tmp_path, name, fmt):
    from driftless.lora.files import load_lora, save_lora
    from driftless.lora.formats import export, to_native

    model, layout, _ = _twin(name)
    native = trained[name]
    path = save_lora(export(native, layout, fmt), tmp_path, f"{name}_{fmt}")
    loaded = load_lora(path)
    assert loaded.metadata["lora_format"] == fmt
    back = to_native(loaded, layout)
    assert set(back) == set(native)
    for key in native:
        assert torch.equal(back[key], native[key]), key


def test_export_file_layouts(comfy_host, trained, tmp_path):
    """Keys and metadata as diffusers and sd-scripts write them; SDXL kohya names are LDM names."""
    from driftless.lora.files import load_lora, save_lora
    from driftless.lora.formats import export
    from driftless.lora.storage import load_safetensors

    _, sd15, _ = _twin("sd15-tiny")
    _, sdxl, _ = _twin("sdxl-tiny")
    peft_file = save_lora(export(trained["sd15-tiny"], sd15, "diffusers"), tmp_path, "peft")
    tensors, raw = load_safetensors(peft_file)
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in tensors
    assert raw["format"] == "pt"
    config = json.loads(raw["lora_adapter_metadata"])
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 8 and config["unet.use_rslora"] is False
    assert len(config["unet.target_modules"]) == len(tensors) // 2
    kohya_sd15 = load_lora(save_lora(export(trained["sd15-tiny"], sd15, "kohya"), tmp_path, "k15"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in kohya_sd15
    assert kohya_sd15.metadata["ss_network_module"] == "networks.lora" and kohya_sd15.metadata["ss_network_dim"] == 4
    assert kohya_sd15.metadata["ss_base_model_version"] == "sd_v1"
    assert kohya_sd15.metadata["ss_network_args"] == {"conv_dim": "4", "conv_alpha": "8"}
    kohya_sdxl = load_lora(save_lora(export(trained["sdxl-tiny"], sdxl, "kohya"), tmp_path, "kxl"))
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in kohya_sdxl
    assert "lora_unet_label_emb_0_0.lora_up.weight" in kohya_sdxl  # SDXL's ADM embedding, a UNet layer
    assert not any(k.startswith("lora_te") for k in kohya_sdxl)  # UNet only: no text-encoder keys
    assert kohya_sdxl.metadata["ss_base_model_version"] == "sdxl_base_v1-0"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_kohya_export_through_the_stock_lora_loader(comfy_host, trained, tmp_path, name):
    """ComfyUI's own LoraLoader reads the kohya export: every key applied, same output as the adapter."""
    import comfy.lora
    import comfy.sd
    from driftless.lora.files import load_lora, save_lora
    from driftless.lora.formats import export

    model, layout, _ = _twin(name)
    inputs = Inputs(name)
    kohya = load_lora(save_lora(export(trained[name], layout, "kohya"), tmp_path, name))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(dict(kohya), key_map, log_missing=False)
    assert len(patches) == len(kohya) // 3
    merged, _ = comfy.sd.load_lora_for_models(model, None, dict(kohya), 1.0, 0.0)
    merged.patch_model()
    try:
        with torch.no_grad():
            got = merged.model.diffusion_model(inputs.x, inputs.t, context=inputs.context, y=inputs.y)
    finally:
        merged.unpatch_model()
    torch.testing.assert_close(got, inputs.comfy(model, trained[name]), **TOLERANCE)


PEFT_VARIANTS = {
    # LoraConfig fields beyond the targets; rank/alpha patterns exercise per-layer conventions
    "patterns": dict(r=4, lora_alpha=6, rank_pattern={"conv1": 2}, alpha_pattern={"to_k": 3}),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True),
}
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "time_emb_proj", "ff.net.2"]


def _peft_lora(unet, **fields):
    from peft import LoraConfig

    torch.manual_seed(3)  # peft draws A and B (init_lora_weights=False: B is not zero, so the LoRA acts)
    config = LoraConfig(target_modules=PEFT_TARGETS, init_lora_weights=False, **fields)
    unet.add_adapter(config)
    return config


@pytest.mark.parametrize("variant", sorted(PEFT_VARIANTS))
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_lora_made_by_peft_and_saved_by_diffusers_gives_comfyui_the_same_output(comfy_host, tmp_path, name, variant):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from driftless.lora.files import load_lora
    from driftless.lora.formats import to_native
    from peft import get_peft_model_state_dict

    model, layout, unet = _twin(name)
    inputs = Inputs(name)
    config = _peft_lora(unet, **PEFT_VARIANTS[variant])
    want = inputs.diffusers(unet)
    assert (want - inputs.comfy(model)).abs().max() > 1e-2
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        str(tmp_path), unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=config.to_dict())
    native = to_native(load_lora(tmp_path / "pytorch_lora_weights.safetensors"), layout)
    torch.testing.assert_close(inputs.comfy(model, native), want, **TOLERANCE)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_peft_save_pretrained_folder_and_a_file_without_config(comfy_host, tmp_path, name):
    """adapter_model.safetensors + adapter_config.json (base_model.model.* keys); and a file with no
    config at all, which diffusers itself reads with scale 1: both give diffusers' output."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from driftless.lora.files import load_lora
    from driftless.lora.formats import to_native
    from peft import get_peft_model, get_peft_model_state_dict

    model, layout, unet = _twin(name)
    inputs = Inputs(name)
    config = _peft_lora(unet, r=4, lora_alpha=2)
    state = get_peft_model_state_dict(unet)
    StableDiffusionLoraLoaderMixin.save_lora_weights(str(tmp_path / "bare"), unet_lora_layers=state)
    bare = load_lora(tmp_path / "bare" / "pytorch_lora_weights.safetensors")
    _, _, reference = _twin(name)
    want_bare = inputs.diffusers(_load_in_diffusers(tmp_path / "bare" / "pytorch_lora_weights.safetensors", reference, name))
    torch.testing.assert_close(inputs.comfy(model, to_native(bare, layout)), want_bare, **TOLERANCE)

    _, _, plain = _twin(name)
    wrapped = get_peft_model(plain, config)
    wrapped.base_model.model.load_state_dict({k: v for k, v in unet.state_dict().items()}, strict=False)
    want = inputs.diffusers(wrapped)
    torch.testing.assert_close(want, inputs.diffusers(unet), rtol=0, atol=0)
    wrapped.save_pretrained(str(tmp_path / "peft"))
    folder = load_lora(tmp_path / "peft" / "adapter_model.safetensors")
    assert next(iter(folder)).startswith("base_model.model.") and folder.metadata["adapter_config"]["lora_alpha"] == 2
    torch.testing.assert_close(inputs.comfy(model, to_native(folder, layout)), want, **TOLERANCE)


def test_an_unknown_key_layout_lists_the_formats_and_a_sample_of_keys(comfy_host):
    from driftless.lora.formats import UnknownLoraFormat, to_native

    _, layout, _ = _twin("sd15-tiny")
    foreign = {f"model.blocks.{i}.attn.qkv.weight_delta": torch.zeros(2, 2) for i in range(10)}
    with pytest.raises(UnknownLoraFormat) as err:
        to_native(foreign, layout)
    text = str(err.value)
    for fmt in ("comfyui", "diffusers", "kohya"):
        assert f"{fmt}: " in text
    assert "model.blocks.0.attn.qkv.weight_delta" in text and "(10 keys in all)" in text


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers", "kohya"])
def test_a_lora_for_another_architecture_says_which(comfy_host, trained, fmt):
    from driftless.lora.formats import LoraDoesNotFit, export, to_native

    _, sd15, _ = _twin("sd15-tiny")
    _, sdxl, _ = _twin("sdxl-tiny")
    sd15_lora = export(trained["sd15-tiny"], sd15, fmt)
    with pytest.raises(LoraDoesNotFit, match=r"does not fit this model: \d+ of \d+ LoRA layers match") as err:
        to_native(sd15_lora, sdxl)
    assert f"This is a {fmt} LoRA for an SD1.x/SD2.x-style UNet" in str(err.value)
    assert "the model is SDXL, an SDXL-style UNet" in str(err.value)
    sdxl_lora = export(trained["sdxl-tiny"], sdxl, fmt)
    with pytest.raises(LoraDoesNotFit, match="for an SDXL-style UNet .*the model is SD1.5"):
        to_native(sdxl_lora, sd15)


def test_save_and_load_nodes_export_and_import(comfy_host, trained):
    """Save LoRA writes diffusers/kohya files given the model; Load LoRA reads them back, converting to
    native keys when a model is connected and leaving that to the guider otherwise."""
    from driftless.guidance.guider import adapter_for
    from driftless.nodes.lora_files import LoadLora, SaveLora
    from driftless.lora.files import load_lora

    model, _, _ = _twin("sd15-tiny")
    native = trained["sd15-tiny"]
    loras = comfy_host.base_directory / "models" / "loras"
    for fmt in ("diffusers", "kohya"):
        name = SaveLora.execute(lora=native, filename=f"interop/node_{fmt}", overwrite=True, format=fmt, model=model).result[0]
        assert name == f"interop/node_{fmt}.safetensors"
        assert load_lora(loras / name).metadata["lora_format"] == fmt
        as_is = LoadLora.execute(lora_name=name).result[0]
        assert as_is.metadata["lora_format"] == fmt and not any(k.startswith("diffusion_model.") for k in as_is)
        converted = LoadLora.execute(lora_name=name, model=model).result[0]
        assert set(converted) == set(native) and all(torch.equal(converted[k], native[k]) for k in native)
        from_guider = adapter_for(model, as_is, "lora").lora_state_dict()
        assert all(torch.equal(from_guider[k], native[k]) for k in native)
    with pytest.raises(ValueError, match="needs the model it was made for"):
        SaveLora.execute(lora=native, filename="interop/no_model", overwrite=True, format="kohya")
    assert not (loras / "interop" / "no_model.safetensors").exists()


def test_load_node_refuses_an_unknown_layout_and_a_lora_for_another_architecture(comfy_host, trained):
    from driftless.nodes.lora_files import LoadLora
    from driftless.lora.storage import save_safetensors_atomic

    loras = comfy_host.base_directory / "models" / "loras"
    save_safetensors_atomic({"encoder.layer.0.delta": torch.zeros(2, 2)}, loras / "interop" / "strange.safetensors")
    with pytest.raises(ValueError, match=r"interop/strange.safetensors: no LoRA layers found .*Formats understood: "
                                         r"comfyui: .*diffusers: .*kohya: .*Keys found: encoder.layer.0.delta"):
        LoadLora.execute(lora_name="interop/strange.safetensors")
    sdxl_model, _, _ = _twin("sdxl-tiny")
    save_safetensors_atomic(trained["sd15-tiny"], loras / "interop" / "sd15.safetensors")
    with pytest.raises(ValueError, match="for an SD1.x/SD2.x-style UNet.*the model is SDXL"):
        LoadLora.execute(lora_name="interop/sd15.safetensors", model=sdxl_model)


def test_training_starts_from_an_imported_lora(comfy_host, trained):
    """A kohya file as the starting point: the run's adapter begins as that LoRA (its layers, ranks,
    alphas), and the settings record which LoRA it was, so a resume from another one is refused."""
    import numpy as np
    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.data import TrainingData
    from driftless.lora.fingerprint import lora_fingerprint
    from driftless.trainers.loop import train_lora
    from driftless.lora.formats import export
    from skimage import data as images

    model, clip, vae = build_tiny_model("sd15-tiny", 0)
    _, layout, _ = _twin("sd15-tiny")
    native = trained["sd15-tiny"]
    photo = torch.from_numpy(np.asarray(images.coffee()[:256:4, :256:4], dtype=np.float32) / 255.0)[None]
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    data = TrainingData(vae.encode(photo), [encode("a photo of sks mug")], encode(""), ["a photo of sks mug"])
    # settings that differ from the LoRA's: rank 16, attention only; the initial LoRA's own layers win
    config = TrainConfig(steps=1, rank=16, alpha=1.0, targets="attention", learning_rate=1e-12, seed=2)
    result = train_lora(model, data, config, initial_lora=export(native, layout, "kohya"))
    state = result.adapter.lora_state_dict()
    assert set(state) == set(native) and result.adapter.ranks == dict.fromkeys(result.adapter.names, 4)
    for key in native:
        torch.testing.assert_close(state[key], native[key], rtol=0, atol=1e-8)  # one step at lr 1e-12
    assert result.adapter.layers[0].alpha.item() == 8.0
    from driftless.trainers.start import InitialLora, with_initial_lora

    initial = InitialLora.of(model, export(native, layout, "kohya"))
    assert initial.fingerprint == lora_fingerprint(native) and set(initial.weights) == set(native)
    recorded = with_initial_lora(config, initial)
    assert recorded.initial_lora == lora_fingerprint(native) and recorded.fingerprint() != config.fingerprint()
